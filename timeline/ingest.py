"""The ingest pipeline: resolve identity -> store (idempotent) -> publish.

``ingest_batch`` does the first two inside a caller's transaction for any number of
events with a fixed number of statements (Core bulk inserts), so a webhook, a mailbox
sync and the group-commit writer all share one path:

1. each event's customer: its ``customer_id``, else its counterpart identity,
   normalized and resolved (an unknown sender becomes a new customer);
2. events whose ``(channel, external_id)`` we already hold, or that repeat earlier in
   the batch, are not stored again: their status moves forward only (``timeline.status``);
3. the rest are inserted with ``ON CONFLICT DO NOTHING``, attachments become documents.

Every input gets an :class:`Outcome`, in order. ``ingest`` wraps a batch in a write
transaction and publishes what changed once it is committed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline import consent, sqlite_direct
from timeline import customers as customer_ops
from timeline.db import Database
from timeline.errors import InvalidIdentity
from timeline.events import Channel, Direction, Event, Identity, Kind, utcnow
from timeline.files import FileStore
from timeline.identity import normalize
from timeline.ids import new_id, new_ids
from timeline.publish import Publisher
from timeline.records import StoredEvent
from timeline.schema import documents, events
from timeline.search import index_new_events
from timeline.sql import chunks, insert_ignoring
from timeline.status import advances

log = logging.getLogger(__name__)

OutcomeKind = Literal["created", "updated", "duplicate", "unknown", "rejected"]


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one ingested event.

    ``created``: stored as new. ``updated``: we held it; its status moved forward.
    ``duplicate``: we held it; nothing changed. ``unknown``: a status update for
    something we do not hold. ``rejected``: unusable (``reason`` says why).
    """

    kind: OutcomeKind
    event: StoredEvent | None = None
    reason: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class IngestResult:
    """The outcomes of a batch, in input order."""

    outcomes: list[Outcome]

    @property
    def changed(self) -> list[StoredEvent]:
        """Created and updated events, for publishing."""
        return [
            o.event
            for o in self.outcomes
            if o.event is not None and o.kind in ("created", "updated")
        ]

    def count(self, kind: OutcomeKind) -> int:
        """How many outcomes are of this kind."""
        return sum(1 for o in self.outcomes if o.kind == kind)


def _attachment_rows(
    event: Event, event_id: str, customer_id: str, files: FileStore | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    summaries: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    now = utcnow()
    for att in event.attachments:
        doc_id = new_id()
        sha = None
        size = 0
        if att.content is not None:
            if files is None:
                raise RuntimeError("attachments with content need a FileStore")
            sha = files.put(att.content)
            size = len(att.content)
        rows.append(
            {
                "id": doc_id,
                "customer_id": customer_id,
                "event_id": event_id,
                "filename": att.filename,
                "content_type": att.content_type,
                "size": size,
                "sha256": sha,
                "content_id": att.content_id,
                "source_url": att.url,
                "created_at": now,
            }
        )
        summaries.append(
            {
                "id": doc_id,
                "filename": att.filename,
                "content_type": att.content_type,
                "size": size,
            }
        )
    return summaries, rows


_EXISTING = sa.select(events.c.id, events.c.external_id).where(
    events.c.channel == sa.bindparam("channel"),
    events.c.external_id.in_(sa.bindparam("external_ids", expanding=True)),
)


_INSERT_EVENTS = sqlite_direct.Insert(events, "ON CONFLICT (channel, external_id) DO NOTHING")


def _event_row(e: StoredEvent, now: datetime) -> dict[str, Any]:
    """The events-table row of a new event, for SQLAlchemy."""
    return {
        "id": e.id,
        "customer_id": e.customer_id,
        "channel": e.channel,
        "kind": e.kind,
        "direction": e.direction,
        "external_id": e.external_id,
        "occurred_at": e.occurred_at,
        "status": e.status,
        "subject": e.subject,
        "text": e.text,
        "html": e.html,
        "thread_key": e.thread_key,
        "sender": e.sender,
        "recipient": e.recipient,
        "attachments": e.attachments,
        "data": e.data,
        "created_at": now,
        "updated_at": now,
    }


#: The events table's columns in the order ``_insert_sqlite`` builds its tuples.
_COLUMNS = (
    "id",
    "customer_id",
    "channel",
    "kind",
    "direction",
    "external_id",
    "occurred_at",
    "status",
    "subject",
    "text",
    "html",
    "thread_key",
    "sender",
    "recipient",
    "attachments",
    "data",
    "created_at",
    "updated_at",
)


async def _insert_sqlite(conn: AsyncConnection, ordered: list[StoredEvent], now: datetime) -> int:
    """Insert new events on SQLite; the rows inserted.

    On the driver path the rows are tuples converted by the columns' own bind
    processors (as SQLAlchemy would), the batch's shared values (timestamps, no
    attachments) once: stored bytes are the same (``tests/timeline/test_ingest_direct.py``).
    """
    conv = _INSERT_EVENTS.converters(conn)
    if conv is None:
        rows = [_event_row(e, now) for e in ordered]
        insert = insert_ignoring(conn, events, ["channel", "external_id"])
        return int((await conn.execute(insert, rows)).rowcount)
    if _INSERT_EVENTS.names(conn.dialect) != _COLUMNS:
        raise RuntimeError("events columns changed: update timeline.ingest._COLUMNS")
    when, as_json, at = conv["occurred_at"], conv["data"], conv["created_at"]
    if (
        when is None
        or as_json is None
        or at is None
        or conv["attachments"] is None
        or any(conv[c] is not None for c in _COLUMNS if c not in _CONVERTED)
    ):
        raise RuntimeError("events column types changed: update timeline.ingest")
    stamp = at(now)
    none = as_json([])
    values = [
        (
            e.id,
            e.customer_id,
            e.channel,
            e.kind,
            e.direction,
            e.external_id,
            when(e.occurred_at),
            e.status,
            e.subject,
            e.text,
            e.html,
            e.thread_key,
            e.sender,
            e.recipient,
            as_json(e.attachments) if e.attachments else none,
            as_json(e.data),
            stamp,
            stamp,
        )
        for e in ordered
    ]
    count = await _INSERT_EVENTS.many_converted(conn, values)
    if count is None:  # pragma: no cover - the driver path was checked just above
        raise RuntimeError("SQLite driver connection went away mid-batch")
    return count


_CONVERTED = frozenset({"occurred_at", "attachments", "data", "created_at", "updated_at"})


async def _existing(
    conn: AsyncConnection, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    by_channel: dict[str, list[str]] = {}
    for channel, external_id in keys:
        by_channel.setdefault(channel, []).append(external_id)
    for channel, ids in by_channel.items():
        for part in chunks(ids):
            direct = await sqlite_direct.rows(
                conn,
                sqlite_direct.in_list(
                    "SELECT id, external_id FROM events WHERE channel = ? AND external_id IN",
                    len(part),
                ),
                (channel, *part),
            )
            if direct is not None:
                for event_id, external_id in direct:
                    found[(channel, external_id)] = {"id": event_id}
                continue
            rows = await conn.execute(_EXISTING, {"channel": channel, "external_ids": part})
            for row in rows.mappings():
                found[(channel, row["external_id"])] = {"id": row["id"]}
    return found


async def _advance(conn: AsyncConnection, event_id: str, channel: str, update: Event) -> bool:
    """Move one stored event's status forward, compare-and-set; whether it moved."""
    for _ in range(3):
        row = (
            (
                await conn.execute(
                    sa.select(events.c.status, events.c.data).where(events.c.id == event_id)
                )
            )
            .mappings()
            .one()
        )
        if not advances(channel, row["status"], update.status):
            return False
        data = {**(row["data"] or {}), **update.data}
        result = await conn.execute(
            events.update()
            .where(events.c.id == event_id, events.c.status.is_not_distinct_from(row["status"]))
            .values(status=update.status, data=data, updated_at=utcnow())
        )
        if result.rowcount == 1:
            return True
    return False


async def ingest_batch(
    conn: AsyncConnection,
    batch: Sequence[Event],
    *,
    region: str,
    files: FileStore | None = None,
) -> IngestResult:
    """Resolve and store a batch of events in the caller's transaction."""
    outcomes: list[Outcome | None] = [None] * len(batch)
    counterparts: dict[int, Identity] = {}
    normalized: dict[Identity, Identity | InvalidIdentity] = {}
    for i, ev in enumerate(batch):
        if ev.update_only or ev.customer_id:
            continue
        who = ev.counterpart
        if who is None:
            outcomes[i] = Outcome(
                "rejected", reason="no customer: neither customer_id nor a counterpart identity"
            )
            continue
        # Many events of a batch share a sender: normalize each one once.
        known = normalized.get(who)
        if known is None:
            try:
                known = normalize(who, region)
            except InvalidIdentity as exc:
                known = exc
            normalized[who] = known
        if isinstance(known, InvalidIdentity):
            outcomes[i] = Outcome("rejected", reason=str(known))
        else:
            counterparts[i] = known

    keys = {(ev.channel.value, ev.external_id) for ev in batch if ev.external_id is not None}
    existing = await _existing(conn, keys) if keys else {}

    # First occurrence of each key in the batch is a candidate insert; repeats are updates.
    seen: set[tuple[str, str]] = set()
    inserts: list[int] = []
    updates: list[int] = []
    for i, ev in enumerate(batch):
        if outcomes[i] is not None:
            continue
        key = (ev.channel.value, ev.external_id) if ev.external_id is not None else None
        if key is not None and (key in existing or key in seen):
            updates.append(i)
        elif ev.update_only:
            outcomes[i] = Outcome("unknown", reason="no stored event with this id")
        else:
            if key is not None:
                seen.add(key)
            inserts.append(i)

    resolved = await customer_ops.resolve(
        conn, [counterparts[i] for i in inserts if i in counterparts]
    )
    now = utcnow()
    created: list[StoredEvent] = []
    doc_rows: dict[str, list[dict[str, Any]]] = {}
    event_ids = new_ids(len(inserts))
    for i, event_id in zip(inserts, event_ids, strict=True):
        ev = batch[i]
        customer_id = ev.customer_id or resolved[counterparts[i]]
        summaries: list[dict[str, Any]] = []
        if ev.attachments:
            summaries, docs = _attachment_rows(ev, event_id, customer_id, files)
            doc_rows[event_id] = docs
        sender = ev.sender
        recipient = ev.recipient
        if i in counterparts:
            # Store the normalized form of the customer's side.
            if ev.counterpart is sender:
                sender = counterparts[i]
            else:
                recipient = counterparts[i]
        created.append(
            StoredEvent(
                event_id,
                customer_id,
                ev.channel.value,
                ev.kind.value,
                ev.direction.value,
                ev.occurred_at,
                ev.status,
                ev.subject,
                ev.text,
                ev.html,
                ev.thread_key,
                ev.external_id,
                sender.value if sender else None,
                recipient.value if recipient else None,
                summaries,
                dict(ev.data),
            )
        )
    inserted_ids: set[str] = set()
    if created:
        # Sorted by the unique key, so concurrent batches take their locks in one order.
        ordered = sorted(created, key=lambda e: (e.channel, e.external_id or ""))
        if conn.dialect.name == "sqlite":
            # Writers are serialized (BEGIN IMMEDIATE) and the keys we hold were filtered
            # out above under that lock: every row goes in, in this order.
            count = await _insert_sqlite(conn, ordered, now)
            if count != len(ordered):
                raise RuntimeError("events insert conflicted under the write lock")
            inserted_ids = {e.id for e in ordered}
            await index_new_events(conn, ordered[0].id)
        else:
            # Another transaction may have stored a key meanwhile: RETURNING says which
            # rows are ours.
            insert = insert_ignoring(conn, events, ["channel", "external_id"])
            got = await conn.execute(
                insert.returning(events.c.id), [_event_row(e, now) for e in ordered]
            )
            inserted_ids = set(got.scalars())
    lost: list[int] = []
    all_docs = [d for e in created if e.id in inserted_ids for d in doc_rows.get(e.id, [])]
    if all_docs:
        await conn.execute(documents.insert(), all_docs)
    for i, new in zip(inserts, created, strict=True):
        if new.id in inserted_ids:
            outcomes[i] = Outcome("created", new)
            if new.kind == Kind.CONSENT.value:
                data = new.data
                await consent.apply(
                    conn,
                    new.customer_id,
                    new.channel,
                    data.get("purposes", consent.PURPOSES),
                    cast(str, data.get("state", new.status)),
                    at=new.occurred_at,
                    event_id=new.id,
                )
        else:
            lost.append(i)  # another process stored the same key meanwhile

    if updates or lost:
        existing = await _existing(
            conn,
            {(batch[i].channel.value, batch[i].external_id) for i in updates + lost},  # type: ignore[misc]
        )

        def lock_order(i: int) -> tuple[str, int]:
            # Rows in id order (concurrent batches on PostgreSQL lock in one order), and
            # the updates of one event in the order they came.
            found = existing.get((batch[i].channel.value, batch[i].external_id or ""))
            return (found["id"] if found else "", i)

        for i in sorted(updates + lost, key=lock_order):
            ev = batch[i]
            stored = existing.get((ev.channel.value, ev.external_id or ""))
            if stored is None:
                outcomes[i] = Outcome("unknown", reason="no stored event with this id")
                continue
            if await _advance(conn, stored["id"], ev.channel.value, ev):
                fresh = (
                    (await conn.execute(sa.select(events).where(events.c.id == stored["id"])))
                    .mappings()
                    .one()
                )
                outcomes[i] = Outcome("updated", StoredEvent.from_row(fresh))
            else:
                outcomes[i] = Outcome("duplicate", reason="already stored")
    return IngestResult([o if o is not None else Outcome("rejected") for o in outcomes])


async def ingest(
    db: Database,
    batch: Sequence[Event],
    *,
    region: str,
    publisher: Publisher | None = None,
    files: FileStore | None = None,
) -> IngestResult:
    """Ingest a batch in one write transaction, then publish what changed."""
    async with db.write() as conn:
        result = await ingest_batch(conn, batch, region=region, files=files)
    if publisher is not None:
        for stored in result.changed:
            publisher.publish("timeline", stored)
    rejected = result.count("rejected")
    if rejected:
        log.warning("ingest rejected %d of %d events", rejected, len(batch))
    return result


async def advance(
    conn: AsyncConnection,
    event_id: str,
    channel: Channel | str,
    status: str,
    data: Mapping[str, Any] | None = None,
) -> StoredEvent | None:
    """Move a stored event's status forward (merging ``data``); the event if it moved."""
    update = Event(
        channel=Channel(channel),
        kind=Kind.MESSAGE,
        direction=Direction.OUTBOUND,
        occurred_at=utcnow(),
        status=status,
        data=dict(data or {}),
        update_only=True,
    )
    if not await _advance(conn, event_id, Channel(channel).value, update):
        return None
    row = (await conn.execute(sa.select(events).where(events.c.id == event_id))).mappings().one()
    return StoredEvent.from_row(row)


async def attach_external_id(
    conn: AsyncConnection, event_id: str, channel: Channel | str, external_id: str
) -> bool:
    """Give an event we made (an outbound message) the provider's id, once.

    An id of an earlier, failed attempt (``data["previous_attempts"]``) is refused.
    """
    data = (
        await conn.execute(sa.select(events.c.data).where(events.c.id == event_id))
    ).scalar_one_or_none()
    previous = {a.get("external_id") for a in (data or {}).get("previous_attempts", [])}
    if external_id in previous:
        return False
    result = await conn.execute(
        events.update()
        .where(
            events.c.id == event_id,
            events.c.channel == Channel(channel).value,
            events.c.external_id.is_(None),
        )
        .values(external_id=external_id, updated_at=utcnow())
    )
    return bool(result.rowcount == 1)


async def restart_delivery(
    conn: AsyncConnection, event_id: str, attempt: Mapping[str, Any]
) -> StoredEvent:
    """Put a failed outbound event back to ``queued`` for another attempt.

    The one sanctioned step backwards: the provider's id and status of the failed
    attempt move to ``data["previous_attempts"]``, so late callbacks for that attempt
    are recognised and cannot claim the new one.
    """
    row = (await conn.execute(sa.select(events).where(events.c.id == event_id))).mappings().one()
    data = dict(row["data"] or {})
    data["previous_attempts"] = [*data.get("previous_attempts", []), dict(attempt)]
    await conn.execute(
        events.update()
        .where(events.c.id == event_id)
        .values(status="queued", external_id=None, data=data, updated_at=utcnow())
    )
    fresh = (await conn.execute(sa.select(events).where(events.c.id == event_id))).mappings().one()
    return StoredEvent.from_row(fresh)


async def record_sends(
    conn: AsyncConnection, channel: Channel | str, sent: list[tuple[str, str, str]]
) -> list[StoredEvent]:
    """For many ``(event id, provider id, status)``: attach the id, move the status.

    The batched form of :func:`attach_external_id` + :func:`advance` for a sender's
    round (a fresh provider id is never one of an earlier attempt). Returns the events
    whose status moved.
    """
    if not sent:
        return []
    name = Channel(channel).value
    now = utcnow()
    await conn.execute(
        events.update()
        .where(
            events.c.id == sa.bindparam("event_id"),
            events.c.channel == name,
            events.c.external_id.is_(None),
        )
        .values(external_id=sa.bindparam("sid"), updated_at=now),
        [{"event_id": e, "sid": sid} for e, sid, _ in sent],
    )
    wanted = {e: status for e, _, status in sent}
    current = await conn.execute(
        sa.select(events.c.id, events.c.status).where(events.c.id.in_(list(wanted)))
    )
    moving = [
        {"event_id": event_id, "old": status, "new": wanted[event_id]}
        for event_id, status in current
        if advances(name, status, wanted[event_id])
    ]
    if not moving:
        return []
    await conn.execute(
        events.update()
        .where(
            events.c.id == sa.bindparam("event_id"),
            events.c.status.is_not_distinct_from(sa.bindparam("old")),
        )
        .values(status=sa.bindparam("new"), updated_at=now),
        moving,
    )
    rows = await conn.execute(
        sa.select(events).where(events.c.id.in_([m["event_id"] for m in moving]))
    )
    return [StoredEvent.from_row(r) for r in rows.mappings()]
