"""Reading the timeline: keyset pages, single events, threads.

A page is ``WHERE customer_id = ? AND (occurred_at, id) < cursor ORDER BY occurred_at
DESC, id DESC LIMIT n`` on the index of exactly those columns, so the first page and the
thousandth cost the same, and events that arrive while an agent scrolls neither shift
nor repeat what is behind the cursor. Writing goes through ``timeline.ingest``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.errors import NotFound
from timeline.records import StoredEvent
from timeline.schema import events
from timeline.search import event_matches

MAX_PAGE = 200


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
    query = sa.select(events).where(events.c.customer_id == customer_id)
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
    query = query.order_by(events.c.occurred_at.desc(), events.c.id.desc()).limit(limit + 1)
    rows = (await conn.execute(query)).mappings().all()
    items = [StoredEvent.from_row(r) for r in rows[:limit]]
    nxt = None
    if len(rows) > limit:
        last = items[-1]
        nxt = encode_cursor(last.occurred_at, last.id)
    return items, nxt


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
