"""The outbox: outbound messages written with their timeline event, sent by a worker.

``enqueue`` runs in the caller's transaction, so a queued event and its outbox row
commit together or not at all. A sender worker ``claim``\\ s due rows (PostgreSQL:
``FOR UPDATE SKIP LOCKED``, so several workers never take the same row; SQLite: one
writer at a time), sends, and records the outcome:

- ``mark_sent``: the provider accepted it (its id is kept for status callbacks);
- ``retry_later``: a known failure worth retrying, after a delay;
- ``mark_failed``: a known permanent failure;
- ``mark_unknown``: we cannot tell whether the provider accepted it (a timeout after
  the request left, a crash). Such a row is never sent again blindly: reconciliation
  looks the message up at the provider and settles it.

A claim older than ``stale_after`` belongs to a worker that died: ``recover_stale`` marks
it ``unknown`` (the send may have happened), never ``pending``.

States: ``pending -> claimed -> sent | failed | pending (retry) | unknown``;
``unknown -> sent | failed | pending`` by reconciliation; ``skipped`` when a send was
refused before it left (an opted-out customer). A retryable delivery failure reported
later (a status callback) sends the row back to ``pending`` (``reopen``), from ``sent``
or, when the callback came before the sender recorded the send, from ``claimed`` or
``unknown``; the sender's record of a send or of an unknown outcome then applies only
to a row still at that claim's attempt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.db import Database
from timeline.events import utcnow
from timeline.ids import new_id
from timeline.schema import outbox

PENDING = "pending"
CLAIMED = "claimed"
SENT = "sent"
FAILED = "failed"
UNKNOWN = "unknown"
SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxItem:
    """A claimed row: what to send and for which event."""

    id: str
    event_id: str
    channel: str
    idempotency_key: str
    payload: dict[str, Any]
    attempts: int
    provider_id: str | None


async def enqueue(
    conn: AsyncConnection,
    *,
    event_id: str,
    channel: str,
    payload: Mapping[str, Any],
    idempotency_key: str | None = None,
    not_before: datetime | None = None,
) -> str:
    """Add a row in the caller's transaction; the key (default: the row id) is unique."""
    now = utcnow()
    row_id = new_id()
    await conn.execute(
        outbox.insert().values(
            id=row_id,
            event_id=event_id,
            channel=channel,
            idempotency_key=idempotency_key or row_id,
            payload=dict(payload),
            state=PENDING,
            attempts=0,
            not_before=not_before or now,
            created_at=now,
            updated_at=now,
        )
    )
    return row_id


async def claim(db: Database, channel: str, worker: str, *, limit: int = 50) -> list[OutboxItem]:
    """Take up to ``limit`` due rows of a channel for this worker, oldest first."""
    now = utcnow()
    async with db.write() as conn:
        due = (
            sa.select(outbox.c.id)
            .where(
                outbox.c.state == PENDING,
                outbox.c.channel == channel,
                outbox.c.not_before <= now,
            )
            .order_by(outbox.c.not_before, outbox.c.id)
            .limit(limit)
        )
        if conn.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        ids = list((await conn.execute(due)).scalars())
        if not ids:
            return []
        await conn.execute(
            outbox.update()
            .where(outbox.c.id.in_(ids))
            .values(
                state=CLAIMED,
                claimed_at=now,
                claimed_by=worker,
                attempts=outbox.c.attempts + 1,
                updated_at=now,
            )
        )
        rows = await conn.execute(
            sa.select(outbox).where(outbox.c.id.in_(ids)).order_by(outbox.c.not_before, outbox.c.id)
        )
        return [
            OutboxItem(
                id=r["id"],
                event_id=r["event_id"],
                channel=r["channel"],
                idempotency_key=r["idempotency_key"],
                payload=r["payload"],
                attempts=r["attempts"],
                provider_id=r["provider_id"],
            )
            for r in rows.mappings()
        ]


async def _finish(
    conn: AsyncConnection, row_id: str, state: str, attempt: int | None = None, **values: Any
) -> bool:
    where = [outbox.c.id == row_id, outbox.c.state.in_([CLAIMED, UNKNOWN])]
    if attempt is not None:
        # Only this claim's outcome: a status callback may have re-queued the row (and
        # another worker claimed it again) before the sender recorded its send.
        where.append(outbox.c.attempts == attempt)
    result = await conn.execute(
        outbox.update().where(*where).values(state=state, updated_at=utcnow(), **values)
    )
    return result.rowcount == 1


async def mark_sent(conn: AsyncConnection, row_id: str, provider_id: str) -> bool:
    """The provider accepted the message with this id."""
    return await _finish(conn, row_id, SENT, provider_id=provider_id, last_error=None)


async def mark_failed(conn: AsyncConnection, row_id: str, error: str) -> bool:
    """A known, permanent failure; never retried."""
    return await _finish(conn, row_id, FAILED, last_error=error)


async def mark_skipped(conn: AsyncConnection, row_id: str, reason: str) -> bool:
    """Refused before sending (for example the customer opted out)."""
    return await _finish(conn, row_id, SKIPPED, last_error=reason)


async def mark_unknown(
    conn: AsyncConnection, row_id: str, error: str, attempt: int | None = None
) -> bool:
    """The outcome is unknown; only reconciliation may settle it.

    ``attempt``: only if the row is still at that claim's attempt.
    """
    return await _finish(conn, row_id, UNKNOWN, attempt, last_error=error)


async def retry_later(conn: AsyncConnection, row_id: str, error: str, delay: timedelta) -> bool:
    """A known failure worth another try after ``delay``."""
    return await _finish(
        conn,
        row_id,
        PENDING,
        last_error=error,
        not_before=utcnow() + delay,
        claimed_at=None,
        claimed_by=None,
    )


async def recover_stale(db: Database, stale_after: timedelta) -> int:
    """Rows claimed longer ago than ``stale_after`` (a dead worker) become ``unknown``."""
    cutoff = utcnow() - stale_after
    async with db.write() as conn:
        result = await conn.execute(
            outbox.update()
            .where(outbox.c.state == CLAIMED, outbox.c.claimed_at < cutoff)
            .values(state=UNKNOWN, last_error="claim expired: outcome unknown", updated_at=utcnow())
        )
        return int(result.rowcount)


async def unknown_rows(db: Database, channel: str, *, limit: int = 100) -> list[OutboxItem]:
    """Rows whose outcome reconciliation must settle."""
    async with db.read() as conn:
        rows = await conn.execute(
            sa.select(outbox)
            .where(outbox.c.state == UNKNOWN, outbox.c.channel == channel)
            .order_by(outbox.c.updated_at)
            .limit(limit)
        )
        return [
            OutboxItem(
                id=r["id"],
                event_id=r["event_id"],
                channel=r["channel"],
                idempotency_key=r["idempotency_key"],
                payload=r["payload"],
                attempts=r["attempts"],
                provider_id=r["provider_id"],
            )
            for r in rows.mappings()
        ]


async def counts(db: Database) -> dict[str, int]:
    """Rows per state (for health and metrics)."""
    async with db.read() as conn:
        rows = await conn.execute(
            sa.select(outbox.c.state, sa.func.count()).group_by(outbox.c.state)
        )
        return {state: int(n) for state, n in rows}


def _accepted_as(provider_id: str) -> sa.ColumnElement[bool]:
    """Rows whose send the provider accepted as ``provider_id``: recorded as ``sent`` with
    it, or not recorded yet (``claimed``, ``unknown``), which a status callback can outrun
    (Twilio's callbacks are not ordered with its REST answer)."""
    return sa.or_(
        sa.and_(outbox.c.state == SENT, outbox.c.provider_id == provider_id),
        sa.and_(
            outbox.c.state.in_([CLAIMED, UNKNOWN]),
            sa.or_(outbox.c.provider_id.is_(None), outbox.c.provider_id == provider_id),
        ),
    )


async def reopen(
    conn: AsyncConnection, row_id: str, provider_id: str, error: str, delay: timedelta
) -> bool:
    """Send a row again after ``delay``: the provider reported a retryable failure of the
    message it accepted as ``provider_id`` (recorded as sent or not yet recorded).

    The sender's later record of that send then finds the row pending and leaves it.
    """
    result = await conn.execute(
        outbox.update()
        .where(outbox.c.id == row_id, _accepted_as(provider_id))
        .values(
            state=PENDING,
            last_error=error,
            not_before=utcnow() + delay,
            provider_id=None,
            claimed_at=None,
            claimed_by=None,
            updated_at=utcnow(),
        )
    )
    return bool(result.rowcount == 1)


async def accepted_row_for(
    conn: AsyncConnection, event_id: str, provider_id: str
) -> tuple[str, int] | None:
    """(row id, attempts) of the event's row the provider accepted as ``provider_id``.

    The caller knows the id belongs to the event (a status callback names both); the
    row is ``sent`` with it, or still ``claimed``/``unknown`` when the callback came
    before the sender recorded the send.
    """
    row = (
        await conn.execute(
            sa.select(outbox.c.id, outbox.c.attempts).where(
                outbox.c.event_id == event_id, _accepted_as(provider_id)
            )
        )
    ).first()
    return None if row is None else (row.id, int(row.attempts))


async def mark_sent_many(conn: AsyncConnection, sent: list[tuple[str, str, int]]) -> set[str]:
    """``mark_sent`` for many ``(row id, provider id, attempt)`` in one statement.

    A row counts only while still at that claim's attempt. Returns the rows now ``sent``
    with their provider id; a row a status callback already re-queued (a retryable
    failure that outran this record) is not among them and must be left alone.
    """
    if not sent:
        return set()
    await conn.execute(
        outbox.update()
        .where(
            outbox.c.id == sa.bindparam("row_id"),
            # No IN (...): expanding parameters cannot be used with executemany.
            sa.or_(outbox.c.state == CLAIMED, outbox.c.state == UNKNOWN),
            outbox.c.attempts == sa.bindparam("attempt"),
        )
        .values(
            state=SENT,
            provider_id=sa.bindparam("sid"),
            last_error=None,
            updated_at=utcnow(),
        ),
        [{"row_id": row_id, "sid": sid, "attempt": attempt} for row_id, sid, attempt in sent],
    )
    wanted = {row_id: sid for row_id, sid, _ in sent}
    recorded: set[str] = set()
    ids = list(wanted)
    for start in range(0, len(ids), 500):
        rows = await conn.execute(
            sa.select(outbox.c.id, outbox.c.provider_id).where(
                outbox.c.id.in_(ids[start : start + 500]), outbox.c.state == SENT
            )
        )
        recorded.update(r.id for r in rows if r.provider_id == wanted[r.id])
    return recorded
