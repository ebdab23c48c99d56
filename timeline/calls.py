"""The live state of telephone calls: one ``calls`` row per call leg, beside its event.

The event on the timeline is the call's record (one per call, however many legs ring);
these rows are what is known of each leg while it lasts: its status (forward-only, by
``timeline.status``), when and by whom it was answered, and when it ended. Agents' list
of calls in progress (:func:`open_calls`) reads them, so it survives a page refresh, a
restart and a second hub process.

Updates of one call are serialized by locking its event row first (:func:`lock_event`:
``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's writers are serialized already), so two
callbacks of two legs arriving at once at two processes cannot lose each other's facts.
A closed row (``ended_at``) stays, so late callbacks and recordings still find their call;
it goes with its event when a customer is erased (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline import sqlite_direct, store
from timeline.customers import visible_to
from timeline.db import DirectQuery, Statement
from timeline.events import Channel, IdentityKind, utcnow
from timeline.records import Customer, StoredEvent, iso
from timeline.schema import UTCDateTime, calls, consents, customers, events, identities
from timeline.sql import chunks, insert_ignoring
from timeline.status import TERMINAL, advances

_TERMINAL = TERMINAL[Channel.VOICE]
_UNSET: Any = object()


@dataclasses.dataclass(frozen=True, slots=True)
class CallRow:
    """One leg of a call as stored."""

    call_sid: str
    parent_sid: str | None
    event_id: str
    direction: str
    state: str
    caller: str | None = dataclasses.field(repr=False)
    callee: str | None = dataclasses.field(repr=False)
    started_at: datetime
    answered_at: datetime | None
    answered_by: str | None = dataclasses.field(repr=False)
    ended_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> CallRow:
        """Build from a row of the calls table."""
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


async def open_call(
    conn: AsyncConnection,
    *,
    call_sid: str,
    event_id: str,
    direction: str,
    state: str,
    caller: str | None,
    callee: str | None,
    parent_sid: str | None = None,
    at: datetime | None = None,
) -> bool:
    """Store a new call (or leg) unless it is already stored; whether it was new."""
    now = at or utcnow()
    result = await conn.execute(
        insert_ignoring(conn, calls, ["call_sid"]).values(
            call_sid=call_sid,
            parent_sid=parent_sid,
            event_id=event_id,
            direction=direction,
            state=state,
            caller=caller,
            callee=callee,
            started_at=now,
            answered_at=None,
            answered_by=None,
            ended_at=now if state in _TERMINAL else None,
            updated_at=now,
        )
    )
    return bool(result.rowcount == 1)


async def open_many(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Store new calls in one statement (executemany); calls already stored are kept.

    Each row has the keys of :func:`open_call` (``call_sid``, ``event_id``, ``direction``,
    ``state``, ``caller``, ``callee``, ``at``; ``parent_sid`` optional).
    """
    if not rows:
        return
    now = utcnow()
    values = [
        {
            "call_sid": row["call_sid"],
            "parent_sid": row.get("parent_sid"),
            "event_id": row["event_id"],
            "direction": row["direction"],
            "state": row["state"],
            "caller": row.get("caller"),
            "callee": row.get("callee"),
            "started_at": row.get("at") or now,
            "answered_at": None,
            "answered_by": None,
            "ended_at": (row.get("at") or now) if row["state"] in _TERMINAL else None,
            "updated_at": now,
        }
        for row in rows
    ]
    if await _OPEN_MANY.many(conn, values) is None:  # not SQLite through aiosqlite
        await conn.execute(insert_ignoring(conn, calls, ["call_sid"]), values)


#: :func:`open_many` on SQLite: one trip to the driver, stored as SQLAlchemy stores it.
_OPEN_MANY = sqlite_direct.Insert(calls, "ON CONFLICT (call_sid) DO NOTHING")


async def get(conn: AsyncConnection, call_sid: str) -> CallRow | None:
    """The stored leg with this CallSid, if any."""
    row = (
        (await conn.execute(sa.select(calls).where(calls.c.call_sid == call_sid)))
        .mappings()
        .one_or_none()
    )
    return None if row is None else CallRow.from_row(row)


async def rows_of(conn: AsyncConnection, event_id: str) -> list[CallRow]:
    """Every stored leg of the call recorded by this event, first started first."""
    rows = await conn.execute(
        sa.select(calls)
        .where(calls.c.event_id == event_id)
        .order_by(calls.c.started_at, calls.c.call_sid)
    )
    return [CallRow.from_row(r) for r in rows.mappings()]


async def record_state(
    conn: AsyncConnection,
    call_sid: str,
    *,
    event_id: str,
    state: str,
    direction: str,
    parent_sid: str | None = None,
    caller: str | None = None,
    callee: str | None = None,
    at: datetime | None = None,
) -> CallRow:
    """Store a leg's status: insert it, or move its state forward only.

    Missing numbers are filled in from later callbacks; a terminal state closes the row.
    """
    now = at or utcnow()
    if await open_call(
        conn,
        call_sid=call_sid,
        event_id=event_id,
        direction=direction,
        state=state,
        caller=caller,
        callee=callee,
        parent_sid=parent_sid,
        at=now,
    ):
        row = await get(conn, call_sid)
        assert row is not None
        return row
    row = await get(conn, call_sid)
    assert row is not None
    values: dict[str, Any] = {}
    if advances(Channel.VOICE, row.state, state):
        values["state"] = state
        if state in _TERMINAL and row.ended_at is None:
            values["ended_at"] = now
    if caller and not row.caller:
        values["caller"] = caller
    if callee and not row.callee:
        values["callee"] = callee
    if parent_sid and not row.parent_sid:
        values["parent_sid"] = parent_sid
    if not values:
        return row
    values["updated_at"] = now
    await conn.execute(calls.update().where(calls.c.call_sid == call_sid).values(**values))
    return dataclasses.replace(row, **values)


async def mark_answered(
    conn: AsyncConnection, call_sid: str, *, by: str | None, at: datetime | None = None
) -> bool:
    """Record that the call was answered (the first answer wins); whether this was it."""
    now = at or utcnow()
    result = await conn.execute(
        calls.update()
        .where(calls.c.call_sid == call_sid, calls.c.answered_at.is_(None))
        .values(answered_at=now, answered_by=by, updated_at=now)
    )
    return bool(result.rowcount == 1)


async def close(conn: AsyncConnection, event_id: str, *, at: datetime | None = None) -> int:
    """Close every open leg of the call (it ended); how many were open."""
    now = at or utcnow()
    result = await conn.execute(
        calls.update()
        .where(calls.c.event_id == event_id, calls.c.ended_at.is_(None))
        .values(ended_at=now, updated_at=now)
    )
    return int(result.rowcount or 0)


async def lock_event(conn: AsyncConnection, event_id: str) -> StoredEvent | None:
    """The call's event, locked for this transaction (PostgreSQL; SQLite is serialized)."""
    row = (
        (await conn.execute(sa.select(events).where(events.c.id == event_id).with_for_update()))
        .mappings()
        .one_or_none()
    )
    return None if row is None else StoredEvent.from_row(row)


async def update_event(
    conn: AsyncConnection,
    event_id: str,
    *,
    status: str | None = _UNSET,
    data: Mapping[str, Any] | None = None,
    text: str | None = _UNSET,
) -> StoredEvent:
    """Write a call event's new status, data (replaced whole) and text; the event as stored.

    The caller holds the event's lock and decides: a call's status is derived from all
    its legs (not only moved forward), so a late fact can settle it differently.
    """
    values: dict[str, Any] = {"updated_at": utcnow()}
    if status is not _UNSET:
        values["status"] = status
    if data is not None:
        values["data"] = dict(data)
    if text is not _UNSET:
        values["text"] = text
    await conn.execute(events.update().where(events.c.id == event_id).values(**values))
    row = (await conn.execute(sa.select(events).where(events.c.id == event_id))).mappings().one()
    return StoredEvent.from_row(row)


async def open_calls(
    conn: AsyncConnection, *, limit: int = 200, teams: frozenset[str] | None = None
) -> list[tuple[CallRow, StoredEvent]]:
    """Calls not yet ended (ringing or in progress), oldest first, with their events.

    ``teams``: only calls of customers visible to agents of these teams
    (``timeline.customers.visible_to``); None: every call.
    """
    query = (
        sa.select(calls, events)
        .join(events, events.c.id == calls.c.event_id)
        .where(calls.c.ended_at.is_(None), calls.c.parent_sid.is_(None))
        .order_by(calls.c.started_at, calls.c.call_sid)
        .limit(limit)
    )
    if teams is not None:
        query = query.join(customers, customers.c.id == events.c.customer_id).where(
            visible_to(teams)
        )
    out: list[tuple[CallRow, StoredEvent]] = []
    for row in (await conn.execute(query)).all():
        mapping = row._mapping
        call = CallRow.from_row({c.name: mapping[calls.c[c.name]] for c in calls.columns})
        event = StoredEvent.from_row({c.name: mapping[events.c[c.name]] for c in events.columns})
        out.append((call, event))
    return out


async def customers_many(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, Customer]:
    """Customers as ``timeline.customers.get`` makes them, for many at once in four queries.

    Screen pops of calls arriving together are read together; one customer at a time
    would be four queries per call. On SQLite the four go straight to the driver
    (``DirectQuery.driver_rows``, the ids as one JSON array): through SQLAlchemy's
    execute and result processing they cost ~0.1 ms of CPU per customer, five times the
    database's own work.
    """
    wanted = sorted(set(ids))
    found: dict[str, Customer] = {}
    direct = DirectQuery.direct(conn) and conn.dialect.name == "sqlite"
    for part in chunks(wanted):
        if direct:
            rows = await _customer_rows_sqlite(conn, part)
        else:
            rows = await _customer_rows(conn, part)
        found.update(_customers_of(part, *rows))
    return found


#: A customer row (``customers`` columns, in table order), its identities ``(customer_id,
#: kind, value)``, consents ``(customer_id, channel, purpose, state, updated_at)`` and
#: event counts ``(customer_id, channel, n)``, each with Python values.
_CustomerRows = tuple[list[Any], list[Any], list[Any], list[Any]]


async def _customer_rows(conn: AsyncConnection, part: Sequence[str]) -> _CustomerRows:
    """The rows of :func:`customers_many` through SQLAlchemy (any database)."""
    rows = list(await conn.execute(sa.select(customers).where(customers.c.id.in_(part))))
    identity_rows = await conn.execute(
        sa.select(identities.c.customer_id, identities.c.kind, identities.c.value)
        .where(identities.c.customer_id.in_(part))
        .order_by(identities.c.customer_id, identities.c.created_at, identities.c.id)
    )
    consent_rows = await conn.execute(
        sa.select(
            consents.c.customer_id,
            consents.c.channel,
            consents.c.purpose,
            consents.c.state,
            consents.c.updated_at,
        )
        .where(consents.c.customer_id.in_(part))
        .order_by(consents.c.customer_id, consents.c.channel, consents.c.purpose)
    )
    count_rows = await conn.execute(
        sa.select(events.c.customer_id, events.c.channel, sa.func.count())
        .where(events.c.customer_id.in_(part))
        .group_by(events.c.customer_id, events.c.channel)
    )
    return rows, list(identity_rows), list(consent_rows), list(count_rows)


_IN_IDS = "IN (SELECT value FROM json_each(?))"
_SQLITE_CUSTOMER_ROWS = (
    f"SELECT {', '.join(c.name for c in customers.columns)} FROM customers WHERE id {_IN_IDS}",  # noqa: S608 - constants
    f"SELECT customer_id, kind, value FROM identities WHERE customer_id {_IN_IDS} "  # noqa: S608
    "ORDER BY customer_id, created_at, id",
    "SELECT customer_id, channel, purpose, state, updated_at FROM consents "  # noqa: S608
    f"WHERE customer_id {_IN_IDS} ORDER BY customer_id, channel, purpose",
    f"SELECT customer_id, channel, count(*) FROM events WHERE customer_id {_IN_IDS} "  # noqa: S608
    "GROUP BY customer_id, channel",
)
_CUSTOMER_COLUMNS = tuple(customers.columns.keys())
#: The fields of a Customer that are its row's columns as they are.
_AS_STORED = ("id", "name", "timezone", "created_at", "updated_at", "merged_into", "erased_at")
_CUSTOMER_TIMES = [i for i, c in enumerate(customers.columns) if isinstance(c.type, UTCDateTime)]
_CUSTOMER_ATTRIBUTES = list(customers.columns).index(customers.c.attributes)


async def _customer_rows_sqlite(conn: AsyncConnection, part: Sequence[str]) -> _CustomerRows:
    """The rows of :func:`customers_many` from aiosqlite, their text turned to values."""
    raw = [await DirectQuery.driver_rows(conn, sql, ids) for sql, ids in customers_statements(part)]
    return _typed(raw)


def customers_statements(customer_ids: Sequence[str]) -> list[Statement]:
    """The SQL (SQLite's, for aiosqlite) and parameters of :func:`customers_many`'s four
    reads, for a caller that sends them with other reads; their rows, in order, go to
    :func:`customers_of_rows`."""
    ids = (json.dumps(list(customer_ids)),)
    return [(sql, ids) for sql in _SQLITE_CUSTOMER_ROWS]


def customers_of_rows(customer_ids: Sequence[str], raw: Sequence[list[Any]]) -> dict[str, Customer]:
    """:func:`customers_many` from the rows of :func:`customers_statements` (the ids
    without repeats)."""
    return _customers_of(customer_ids, *_typed(raw))


def _typed(raw: Sequence[list[Any]]) -> _CustomerRows:
    """The rows of the four SQLite reads with their text turned to values."""
    rows = []
    for row in raw[0]:
        values = list(row)
        for i in _CUSTOMER_TIMES:
            values[i] = _utc(values[i])
        values[_CUSTOMER_ATTRIBUTES] = json.loads(values[_CUSTOMER_ATTRIBUTES])
        rows.append(values)
    consent_rows = [(*row[:4], _utc(row[4])) for row in raw[2]]
    return rows, raw[1], consent_rows, raw[3]


def _utc(stored: str | None) -> datetime | None:
    """A UTC timestamp as SQLAlchemy stores it on SQLite (naive text), as it reads it."""
    return None if stored is None else datetime.fromisoformat(stored).replace(tzinfo=UTC)


def _customers_of(
    part: Sequence[str],
    rows: list[Any],
    identity_rows: list[Any],
    consent_rows: list[Any],
    count_rows: list[Any],
) -> dict[str, Customer]:
    phones: dict[str, list[str]] = {cid: [] for cid in part}
    emails: dict[str, list[str]] = {cid: [] for cid in part}
    handles: dict[str, list[dict[str, str]]] = {cid: [] for cid in part}
    for cid, kind, value in identity_rows:
        if kind == IdentityKind.PHONE:
            phones[cid].append(value)
        elif kind == IdentityKind.EMAIL:
            emails[cid].append(value)
        else:
            network, _, ident = value.partition(":")
            handles[cid].append({"network": network, "id": ident})
    consent: dict[str, list[dict[str, Any]]] = {cid: [] for cid in part}
    for cid, channel, purpose, state, updated_at in consent_rows:
        consent[cid].append(
            {"channel": channel, "purpose": purpose, "state": state, "updated_at": iso(updated_at)}
        )
    counts: dict[str, dict[str, int]] = {cid: {} for cid in part}
    for cid, channel, n in count_rows:
        counts[cid][channel] = int(n)
    found: dict[str, Customer] = {}
    for row in rows:
        values = dict(zip(_CUSTOMER_COLUMNS, row, strict=True))
        cid = values["id"]
        tally = counts[cid]
        tally["total"] = sum(tally.values())
        found[cid] = Customer(
            **{name: values[name] for name in _AS_STORED},
            attributes=values["attributes"] or {},
            phones=phones[cid],
            emails=emails[cid],
            handles=handles[cid],
            consent=consent[cid],
            counts=tally,
        )
    return found


async def first_pages(
    conn: AsyncConnection, customer_ids: Iterable[str], *, limit: int = 50
) -> dict[str, list[StoredEvent]]:
    """The first timeline page (``timeline.store.page`` without a cursor) of many customers.

    One statement: a ``UNION ALL`` of each customer's keyset query, so each part still
    walks only the first ``limit`` entries of the timeline index, and the database is
    asked once instead of once per call. The statement for ``k`` customers is built once
    (:func:`_pages_statement`) and compiled once: building its ``k`` subqueries anew for
    every batch cost more than running it.
    """
    wanted = list(dict.fromkeys(customer_ids))
    pages: dict[str, list[StoredEvent]] = {cid: [] for cid in wanted}
    for part in chunks(wanted, _PAGES_CHUNK):
        params: dict[str, Any] = {f"c{i}": cid for i, cid in enumerate(part)}
        params["n"] = limit
        rows = await conn.execute(_pages_statement(len(part)), params)
        for row in rows.mappings():
            pages[row["customer_id"]].append(StoredEvent.from_row(row))
    for page in pages.values():
        page.sort(key=lambda e: (e.occurred_at, e.id), reverse=True)
    return pages


_PAGES_CHUNK = 50


@functools.cache
def _pages_statement(k: int) -> sa.Executable:
    """``UNION ALL`` of ``k`` first-page queries; parameters ``c0..c{k-1}`` and ``n``."""
    order = (events.c.occurred_at.desc(), events.c.id.desc())
    parts = [
        sa.select(
            sa.select(events)
            .where(events.c.customer_id == sa.bindparam(f"c{i}"))
            .order_by(*order)
            .limit(sa.bindparam("n", type_=sa.Integer))
            .subquery(f"p{i}")
        )
        for i in range(k)
    ]
    return parts[0] if k == 1 else sa.union_all(*parts)


async def first_pages_text(
    conn: AsyncConnection, customer_ids: Iterable[str], *, limit: int = 50
) -> dict[str, str]:
    """The first page of each customer as the JSON text of its events' array
    (``[e.to_json() for e in page]``), for a screen pop made once for every stream.

    On SQLite each event's JSON is written by the database (``store.first_page_json``,
    the timeline API's first page, one query per customer sent straight to the driver),
    and the page is those texts joined: no per-event Python. Elsewhere it is
    :func:`first_pages` turned to JSON.
    """
    wanted = list(dict.fromkeys(customer_ids))
    out: dict[str, str] = {}
    for cid in wanted:
        found = await store.first_page_json(conn, cid, limit=limit)
        if found is None:  # not SQLite through aiosqlite: all at once, below
            break
        out[cid] = "[" + ",".join(found[0]) + "]"
    else:
        return out
    pages = await first_pages(conn, wanted, limit=limit)
    return {cid: _dumps([e.to_json() for e in page]) for cid, page in pages.items()}


def first_page_statements(customer_ids: Sequence[str], *, limit: int = 50) -> list[Statement]:
    """The SQL (SQLite's, for aiosqlite) and parameters of each customer's first page as
    :func:`first_pages_text` writes it, for a caller that sends them with other reads;
    the rows of each go to :func:`page_text`.

    One row a page: the event JSON texts of ``store.first_page_json_statement`` (its
    parameters: the customer and how many rows) joined by SQLite in the page's order.
    The page is a co-routine of the aggregate (its ORDER BY and LIMIT keep it from being
    flattened into it), so its rows come in order (tested against the page row by row);
    one row instead of 51 cost SQLite and the driver ~10% less per page.
    """
    return [(_joined_page(), (cid, limit)) for cid in customer_ids]


def page_text(rows: list[Any]) -> str:
    """A first page's JSON array from the rows of its :func:`first_page_statements`."""
    ((joined,),) = rows
    return "[" + (joined or "") + "]"


@functools.cache
def _joined_page() -> str:
    page, _ = store.first_page_json_statement("")
    return f"WITH page(j, at, id) AS ({page}) SELECT group_concat(j, ',') FROM page"  # noqa: S608


async def first_pages_json(
    conn: AsyncConnection, customer_ids: Iterable[str], *, limit: int = 50
) -> dict[str, list[dict[str, Any]]]:
    """The event JSON (``StoredEvent.to_json``) of :func:`first_pages`, from
    :func:`first_pages_text`."""
    pages = await first_pages_text(conn, customer_ids, limit=limit)
    return {cid: json.loads(text) for cid, text in pages.items()}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
