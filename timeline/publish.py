"""The in-process publisher: hands new and changed events to live subscribers.

Each subscriber has a bounded queue; one that stops reading (a dead SSE client) is
dropped rather than allowed to hold memory or slow the publisher. Publishing never
awaits, so a webhook's answer never waits on a slow agent's browser.

Who may receive an item (its customer's teams, docs/security.md) is its :class:`Audience`:
given by the publisher when it read the customer anyway (the screen pop), otherwise read
once by the first stream that needs it, and remembered beside the item for the other
streams. An audience is read at or after the item's commit and never reused for a later
item, so a customer's change of teams applies to the next item published about them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.db import DirectQuery, Statement
from timeline.schema import customer_teams, customers
from timeline.sql import chunks

log = logging.getLogger(__name__)


#: How many items' audiences are remembered, holding the items (a screen pop is ~18 kB);
#: a stream further behind reads its own.
AUDIENCES_KEPT = 512


@dataclasses.dataclass(frozen=True, slots=True)
class Audience:
    """Who may see items about one customer: whether it exists, and its teams."""

    exists: bool
    teams: frozenset[str]

    def admits(self, scope: frozenset[str] | None) -> bool:
        """As ``timeline.customers.is_visible``: None sees all; an unassigned customer
        is seen by every agent, an assigned one by its teams' agents only."""
        if scope is None:
            return True
        return self.exists and (not self.teams or not self.teams.isdisjoint(scope))


async def audiences(conn: AsyncConnection, customer_ids: Iterable[str]) -> dict[str, Audience]:
    """The :class:`Audience` of each customer, one query per 500 (missing: nobody's).

    On SQLite the query goes straight to the driver (the ids as one JSON array).
    """
    wanted = sorted(set(customer_ids))
    rows: list[Any] = []
    direct = DirectQuery.direct(conn) and conn.dialect.name == "sqlite"
    for part in chunks(wanted):
        if direct:
            sql, params = audiences_statement(part)
            rows += await DirectQuery.driver_rows(conn, sql, params)
        else:
            query = (
                sa.select(customers.c.id, customer_teams.c.team)
                .select_from(
                    customers.outerjoin(
                        customer_teams, customer_teams.c.customer_id == customers.c.id
                    )
                )
                .where(customers.c.id.in_(part))
            )
            rows += await conn.execute(query)
    return audiences_of(wanted, rows)


def audiences_statement(customer_ids: Sequence[str]) -> Statement:
    """The SQL (SQLite's, for aiosqlite) and parameters of :func:`audiences`, for a caller
    that sends it with other reads; its rows go to :func:`audiences_of`."""
    return _SQLITE_AUDIENCES, (json.dumps(list(customer_ids)),)


def audiences_of(customer_ids: Iterable[str], rows: Iterable[Any]) -> dict[str, Audience]:
    """The :class:`Audience` of each of ``customer_ids`` from rows ``(customer id, team)``."""
    found: dict[str, set[str]] = {}
    for cid, team in rows:
        teams = found.setdefault(cid, set())
        if team is not None:
            teams.add(team)
    return {cid: Audience(cid in found, frozenset(found.get(cid, ()))) for cid in customer_ids}


_SQLITE_AUDIENCES = (
    "SELECT c.id, t.team FROM customers AS c "
    "LEFT JOIN customer_teams AS t ON t.customer_id = c.id "
    "WHERE c.id IN (SELECT value FROM json_each(?))"
)


class Prepared:
    """A published item whose JSON is written once, for every stream (a screen pop is
    ~18 kB: each stream serializing it again cost ~0.1 ms of CPU per stream).

    ``text``: the JSON; ``customer_id``: whom it is about (None: nobody, so every agent
    may see it, as a pop without a customer); ``data``: the object, parsed on first use
    (the console renders its HTML from it).
    """

    __slots__ = ("_data", "customer_id", "text")

    def __init__(self, text: str, customer_id: str | None) -> None:
        self.text = text
        self.customer_id = customer_id
        self._data: Any = None

    @property
    def data(self) -> Any:
        """The parsed JSON (made once)."""
        if self._data is None:
            self._data = json.loads(self.text)
        return self._data


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
        # id(item) -> (item, audience); holding the item keeps its id from being reused.
        self._audiences: dict[int, tuple[Any, Audience]] = {}

    @property
    def subscriber_count(self) -> int:
        """How many subscribers are listening."""
        return len(self._subscribers)

    def publish(self, topic: str, item: Any, audience: Audience | None = None) -> None:
        """Give ``item`` to every subscriber now; drop those whose queue is full.

        ``audience``: the item's customer's, read in the transaction that made the item
        (or later); without it the first stream that needs it reads it.
        """
        if audience is not None and self._subscribers:
            self.remember(item, audience)
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait((topic, item))
            except asyncio.QueueFull:
                log.warning("dropping a live subscriber that fell %d items behind", self._maxsize)
                sub.dropped = True
                self._subscribers.discard(sub)
                self._end(sub)

    def audience_of(self, item: Any) -> Audience | None:
        """The audience given or remembered for this very item (None: not known)."""
        entry = self._audiences.get(id(item))
        return entry[1] if entry is not None and entry[0] is item else None

    def remember(self, item: Any, audience: Audience) -> None:
        """Keep ``audience`` for ``item`` (read at or after the item's commit)."""
        kept = self._audiences
        kept.pop(id(item), None)
        kept[id(item)] = (item, audience)
        while len(kept) > AUDIENCES_KEPT:
            del kept[next(iter(kept))]

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
