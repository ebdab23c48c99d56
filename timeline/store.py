"""Reading the timeline: keyset pages, single events, threads.

A page is ``WHERE customer_id = ? AND (occurred_at, id) < cursor ORDER BY occurred_at
DESC, id DESC LIMIT n`` on the index of exactly those columns, so the first page and the
thousandth cost the same, and events that arrive while an agent scrolls neither shift
nor repeat what is behind the cursor. Writing goes through ``timeline.ingest``.

The first page (no cursor, channel or words) is what every timeline view, screen pop
and API call asks for. Its SQL is compiled once per dialect (:func:`first_page_statement`)
and sent through the async driver in one call (``timeline.db.DirectQuery``), with the
rows turned into :class:`StoredEvent` here: the same statement through SQLAlchemy's
execute and result machinery cost 3x the driver's own CPU. Other pages are built with
SQLAlchemy Core.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.db import DirectQuery
from timeline.errors import NotFound
from timeline.records import StoredEvent
from timeline.schema import events
from timeline.search import event_matches

MAX_PAGE = 200

#: The columns a StoredEvent holds, in the order of its fields.
_COLUMNS = (
    events.c.id,
    events.c.customer_id,
    events.c.channel,
    events.c.kind,
    events.c.direction,
    events.c.occurred_at,
    events.c.status,
    events.c.subject,
    events.c.text,
    events.c.html,
    events.c.thread_key,
    events.c.external_id,
    events.c.sender,
    events.c.recipient,
    events.c.attachments,
    events.c.data,
)
_NEWEST_FIRST = (events.c.occurred_at.desc(), events.c.id.desc())
_FIRST_PAGE = DirectQuery(
    sa.select(*_COLUMNS)
    .where(events.c.customer_id == sa.bindparam("customer_id", ""))
    .order_by(*_NEWEST_FIRST)
    .limit(sa.bindparam("rows", 1))
)


class BadCursor(ValueError):
    """A cursor that this server did not make."""


def encode_cursor(occurred_at: datetime, event_id: str) -> str:
    """An opaque cursor pointing after the event."""
    raw = f"{occurred_at.isoformat()}|{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor points after; BadCursor if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, event_id = raw.split("|", 1)
        when = datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("not a valid cursor") from None
    if when.tzinfo is None or not event_id:
        raise BadCursor("not a valid cursor")
    return when, event_id


async def page(
    conn: AsyncConnection,
    customer_id: str,
    *,
    limit: int = 50,
    cursor: str | None = None,
    channels: Sequence[str] = (),
    q: str | None = None,
) -> tuple[list[StoredEvent], str | None]:
    """One page of a customer's timeline, newest first, and the cursor of the next."""
    limit = max(1, min(limit, MAX_PAGE))
    if not (cursor or channels or q):
        found = await _FIRST_PAGE.rows(conn, customer_id=customer_id, rows=limit + 1)
        raw = DirectQuery.direct(conn) and conn.dialect.name == "sqlite"
        items = [_from_sqlite(r) if raw else _from_row(tuple(r)) for r in found]
    else:
        query = _page_query(conn, customer_id, limit, cursor, channels, q)
        items = [_from_row(tuple(r)) for r in await conn.execute(query)]
    nxt = None
    if len(items) > limit:
        del items[limit:]
        last = items[-1]
        nxt = encode_cursor(last.occurred_at, last.id)
    return items, nxt


#: The contract's event JSON (``StoredEvent.to_json``) of each row, built by SQLite.
#: Timestamps: SQLAlchemy stores ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC); ``iso()`` writes
#: ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (no fraction when it is zero). ``data`` is spliced in
#: as stored (JSON text that SQLAlchemy's serializer wrote) after the object's closing
#: brace is cut (its last value, the attachments array, ends in ``]``): ``json(data)``
#: would parse and rewrite it, ~17-20 us of a 50-event page's ~0.2 ms.
_SQLITE_FIRST_PAGE_JSON = """SELECT rtrim(json_object(
 'id', id, 'customer_id', customer_id, 'channel', channel, 'kind', kind,
 'direction', direction,
 'occurred_at', replace(CASE WHEN substr(occurred_at, 20) = '.000000'
   THEN substr(occurred_at, 1, 19) ELSE occurred_at END, ' ', 'T') || 'Z',
 'status', status, 'subject', subject, 'text', text, 'html', html,
 'thread_id', thread_key, 'external_id', external_id, 'from', sender, 'to', recipient,
 'attachments', CASE WHEN attachments IS NULL OR attachments IN ('null', '[]')
   THEN json('[]') ELSE (SELECT json_group_array(json_set(value, '$.url',
     '/api/v1/documents/' || json_extract(value, '$.id'))) FROM json_each(attachments))
   END
), '}') || ',"data":'
 || CASE WHEN data IS NULL OR data IN ('null', '{}') THEN '{}' ELSE data END || '}',
 occurred_at, id
FROM events WHERE customer_id = ? ORDER BY occurred_at DESC, id DESC LIMIT ?"""


async def first_page_json(
    conn: AsyncConnection, customer_id: str, *, limit: int = 50
) -> tuple[list[str], str | None] | None:
    """The first page as the contract's event JSON texts, and the next cursor.

    SQLite (aiosqlite) only, else None: the database writes each event's JSON, so the
    page needs no per-row Python (``StoredEvent`` and ``to_json`` cost ~0.5 ms of CPU
    per 50 events, the JSON in SQLite ~0.2 ms). Equal to ``[e.to_json() for e in
    page(...)[0]]`` (tested).
    """
    if not DirectQuery.direct(conn) or conn.dialect.name != "sqlite":
        return None
    sql, params = first_page_json_statement(customer_id, limit)
    return first_page_json_of(await DirectQuery.driver_rows(conn, sql, params), limit)


def first_page_json_statement(customer_id: str, limit: int = 50) -> tuple[str, tuple[Any, ...]]:
    """The SQL (SQLite's, for aiosqlite) and parameters of :func:`first_page_json`.

    For a caller that sends it with other reads (``Database.fetch_each``); its rows go
    to :func:`first_page_json_of`.
    """
    return _SQLITE_FIRST_PAGE_JSON, (customer_id, max(1, min(limit, MAX_PAGE)) + 1)


def first_page_json_of(rows: list[Any], limit: int = 50) -> tuple[list[str], str | None]:
    """The event JSON texts and next cursor from the rows of :func:`first_page_json_statement`."""
    limit = max(1, min(limit, MAX_PAGE))
    nxt = None
    if len(rows) > limit:
        del rows[limit:]
        nxt = encode_cursor(_utc(rows[-1][1]), rows[-1][2])
    return [r[0] for r in rows], nxt


def first_page_statement(
    dialect: sa.Dialect, customer_id: str, rows: int
) -> tuple[str, tuple[Any, ...]]:
    """The SQL of a first page of ``rows`` rows on ``dialect``, and its parameters."""
    return _FIRST_PAGE.statement_for(dialect, customer_id=customer_id, rows=rows)


_raw_decode = json.JSONDecoder().raw_decode


def _loads(text: str) -> Any:
    # raw_decode skips json.loads' whitespace and trailing-data checks (stored JSON is
    # json.dumps output); anything else still goes through json.loads.
    try:
        return _raw_decode(text)[0]
    except ValueError:
        return json.loads(text)


def _json(value: Any) -> Any:
    # Text from aiosqlite and from SQLAlchemy's asyncpg codecs; already decoded elsewhere.
    return _loads(value) if isinstance(value, str) else value


def _utc(text: str) -> datetime:
    """A UTC timestamp as SQLAlchemy stores it on SQLite (naive text, no offset)."""
    try:
        # Parsing with the offset is several times cheaper than .replace(tzinfo=UTC).
        return datetime.fromisoformat(text + "+00:00")
    except ValueError:
        when = datetime.fromisoformat(text)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _from_sqlite(r: Any) -> StoredEvent:
    """A StoredEvent from an aiosqlite row of ``_COLUMNS`` (timestamps are UTC text)."""
    return StoredEvent(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        _utc(r[5]),
        r[6],
        r[7],
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
        r[13],
        [] if r[14] is None or r[14] == "[]" else _loads(r[14]) or [],
        {} if r[15] is None or r[15] == "{}" else _loads(r[15]) or {},
    )


def _from_row(r: tuple[Any, ...]) -> StoredEvent:
    """A StoredEvent from a row of ``_COLUMNS`` with typed timestamps."""
    when: datetime = r[5]
    return StoredEvent(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC),
        r[6],
        r[7],
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
        r[13],
        _json(r[14]) or [],
        _json(r[15]) or {},
    )


def _page_query(
    conn: AsyncConnection,
    customer_id: str,
    limit: int,
    cursor: str | None,
    channels: Sequence[str],
    q: str | None,
) -> sa.Select[Any]:
    query = sa.select(*_COLUMNS).where(events.c.customer_id == customer_id)
    if cursor:
        when, last_id = decode_cursor(cursor)
        query = query.where(
            sa.or_(
                events.c.occurred_at < when,
                sa.and_(events.c.occurred_at == when, events.c.id < last_id),
            )
        )
    if channels:
        query = query.where(events.c.channel.in_(list(channels)))
    if q:
        query = query.where(event_matches(conn.dialect.name, q))
    return query.order_by(*_NEWEST_FIRST).limit(limit + 1)


async def get_event(conn: AsyncConnection, event_id: str) -> StoredEvent:
    """One stored event; NotFound if unknown."""
    row = (
        (await conn.execute(sa.select(events).where(events.c.id == event_id)))
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise NotFound("event", event_id)
    return StoredEvent.from_row(row)


async def find_event(conn: AsyncConnection, channel: str, external_id: str) -> StoredEvent | None:
    """The event with this provider id on this channel, if we hold it."""
    row = (
        (
            await conn.execute(
                sa.select(events).where(
                    events.c.channel == channel, events.c.external_id == external_id
                )
            )
        )
        .mappings()
        .one_or_none()
    )
    return None if row is None else StoredEvent.from_row(row)
