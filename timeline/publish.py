"""The in-process publisher: hands new and changed events to live subscribers.

Each subscriber has a bounded queue; one that stops reading (a dead SSE client) is
dropped rather than allowed to hold memory or slow the publisher. Publishing never
awaits, so a webhook's answer never waits on a slow agent's browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger(__name__)


class Subscription:
    """A subscriber's queue of ``(topic, item)``; iterate it to receive."""

    def __init__(self, publisher: Publisher, maxsize: int) -> None:
        self._publisher = publisher
        self.queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue(maxsize)
        self.dropped = False

    def __aiter__(self) -> AsyncIterator[tuple[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[str, Any]]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        """Stop receiving."""
        self._publisher._subscribers.discard(self)


class Publisher:
    """Fan-out of ``(topic, item)`` to every current subscriber."""

    def __init__(self, maxsize: int = 1000) -> None:
        self._subscribers: set[Subscription] = set()
        self._maxsize = maxsize

    @property
    def subscriber_count(self) -> int:
        """How many subscribers are listening."""
        return len(self._subscribers)

    def publish(self, topic: str, item: Any) -> None:
        """Give ``item`` to every subscriber now; drop those whose queue is full."""
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait((topic, item))
            except asyncio.QueueFull:
                log.warning("dropping a live subscriber that fell %d items behind", self._maxsize)
                sub.dropped = True
                self._subscribers.discard(sub)
                self._end(sub)

    @staticmethod
    def _end(sub: Subscription) -> None:
        # Make room for the end marker so the reader's loop finishes.
        if sub.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        """``with publisher.subscribe() as sub: async for topic, item in sub: ...``"""
        sub = Subscription(self, self._maxsize)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            sub.close()

    def close(self) -> None:
        """End every subscription (shutdown)."""
        for sub in list(self._subscribers):
            self._subscribers.discard(sub)
            self._end(sub)
