"""Exponential backoff with jitter, for SMTP retries and IMAP reconnects.

Jitter spreads the retries of many workers that failed together (a server restart) so
they do not all come back in the same second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Delays ``base * factor**attempt``, capped at ``maximum``, +-``jitter`` of each."""

    base: float = 1.0
    factor: float = 2.0
    maximum: float = 300.0
    jitter: float = 0.2

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        raw = min(self.maximum, self.base * self.factor ** max(0, min(attempt, 64)))
        spread = raw * self.jitter * (2 * rand() - 1)
        return max(0.0, min(self.maximum, raw + spread))


async def sleep_unless(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile; returns whether it was."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
