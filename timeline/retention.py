"""Retention: what goes when its time is over, in batches, leaving a marker behind.

GDPR Art. 5(1)(e) (storage limitation). Each function works on at most ``limit`` rows in
the caller's transaction and returns what it did; ``hub.retention`` runs them in rounds
and deletes files after the commit.

- Document files (uploads, email attachments, MMS media): the row stays as the marker,
  with ``purged_at`` set and ``sha256``/``source_url`` cleared (size 0), so the timeline
  still says a file was there; the file goes once no kept document shares its content.
- Call recordings: the event's ``data.recording`` becomes ``{"sid", "status":
  "deleted", "deleted_at"}`` (no URL: the hub no longer plays it) once the provider
  deleted its copy (``hub.retention`` does that first).
- Provider data: the caller-location and caller-name fields providers send with texts and
  calls (:data:`PROVIDER_DATA_KEYS`) are removed from ``events.data``; the event keeps
  ``data.retention.provider_data_removed_at``.
- Audit records older than their time are deleted (the only deletion of the audit log).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.records import iso
from timeline.schema import audit_log, documents, events

#: Location and caller-name fields of Twilio's SMS and Voice webhooks
#: (https://www.twilio.com/docs/messaging/guides/webhook-request,
#: https://www.twilio.com/docs/voice/twiml#request-parameters).
PROVIDER_DATA_KEYS = (
    "FromCountry",
    "FromState",
    "FromCity",
    "FromZip",
    "ToCountry",
    "ToState",
    "ToCity",
    "ToZip",
    "CallerName",
)
_PROVIDER_MARK = "provider_data_removed_at"


@dataclasses.dataclass(frozen=True, slots=True)
class Recording:
    """A call recording due for deletion."""

    event_id: str
    sid: str


def _as_text(column: sa.Column[Any]) -> sa.ColumnElement[str]:
    return sa.cast(column, sa.Text)


async def purge_document_files(
    conn: AsyncConnection, cutoff: datetime, now: datetime, limit: int
) -> tuple[int, list[str]]:
    """Mark up to ``limit`` documents older than ``cutoff`` as purged.

    Returns (documents marked, hashes of files no kept document uses any more).
    """
    rows = (
        await conn.execute(
            sa.select(documents.c.id, documents.c.sha256)
            .where(
                documents.c.created_at < cutoff,
                # Also a purged row a media fetch in flight gave a file again afterwards.
                sa.or_(documents.c.sha256.is_not(None), documents.c.source_url.is_not(None)),
            )
            .order_by(documents.c.created_at, documents.c.id)
            .limit(limit)
        )
    ).all()
    if not rows:
        return 0, []
    ids = [r.id for r in rows]
    hashes = {r.sha256 for r in rows if r.sha256}
    await conn.execute(
        documents.update()
        .where(documents.c.id.in_(ids))
        .values(sha256=None, size=0, source_url=None, purged_at=now)
    )
    if not hashes:
        return len(ids), []
    still_used = set(
        (
            await conn.execute(
                sa.select(documents.c.sha256).where(documents.c.sha256.in_(sorted(hashes)))
            )
        ).scalars()
    )
    return len(ids), sorted(hashes - still_used)


async def is_file_used(conn: AsyncConnection, sha256: str) -> bool:
    """Whether any document refers to this file (checked again just before deleting it)."""
    found = await conn.execute(
        sa.select(documents.c.id).where(documents.c.sha256 == sha256).limit(1)
    )
    return found.first() is not None


async def due_recordings(
    conn: AsyncConnection, cutoff: datetime, limit: int, *, after: str = ""
) -> list[Recording]:
    """Recordings of calls older than ``cutoff`` not yet deleted, by event id after ``after``."""
    text = _as_text(events.c.data)
    rows = await conn.execute(
        sa.select(events.c.id, events.c.data)
        .where(
            events.c.channel == "voice",
            events.c.occurred_at < cutoff,
            events.c.id > after,
            text.contains('"recording"'),
            ~text.contains('"deleted_at"'),
        )
        .order_by(events.c.id)
        .limit(limit)
    )
    due = []
    for row in rows:
        recording = (row.data or {}).get("recording")
        if isinstance(recording, dict) and isinstance(recording.get("sid"), str):
            due.append(Recording(row.id, recording["sid"]))
    return due


async def mark_recording_deleted(conn: AsyncConnection, event_id: str, now: datetime) -> bool:
    """Replace a call's recording by its marker; False if the event is gone."""
    row = (
        await conn.execute(sa.select(events.c.data).where(events.c.id == event_id))
    ).one_or_none()
    if row is None:
        return False
    data = dict(row.data or {})
    found = data.get("recording")
    old: dict[str, Any] = found if isinstance(found, dict) else {}
    data["recording"] = {"sid": old.get("sid"), "status": "deleted", "deleted_at": iso(now)}
    await conn.execute(
        events.update().where(events.c.id == event_id).values(data=data, updated_at=now)
    )
    return True


async def strip_provider_data(
    conn: AsyncConnection, cutoff: datetime, now: datetime, limit: int
) -> int:
    """Remove :data:`PROVIDER_DATA_KEYS` from up to ``limit`` events older than ``cutoff``."""
    text = _as_text(events.c.data)
    rows = (
        await conn.execute(
            sa.select(events.c.id, events.c.data)
            .where(
                events.c.occurred_at < cutoff,
                events.c.channel.in_(["sms", "voice"]),
                sa.or_(*[text.contains(f'"{key}"') for key in PROVIDER_DATA_KEYS]),
                ~text.contains(f'"{_PROVIDER_MARK}"'),
            )
            .order_by(events.c.occurred_at, events.c.id)
            .limit(limit)
        )
    ).all()
    for row in rows:
        data = {k: v for k, v in (row.data or {}).items() if k not in PROVIDER_DATA_KEYS}
        found = data.get("retention")
        marks: dict[str, Any] = found if isinstance(found, dict) else {}
        data["retention"] = {**marks, _PROVIDER_MARK: iso(now)}
        await conn.execute(
            events.update().where(events.c.id == row.id).values(data=data, updated_at=now)
        )
    return len(rows)


async def delete_audit_records(conn: AsyncConnection, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` audit records older than ``cutoff``."""
    ids = list(
        (
            await conn.execute(
                sa.select(audit_log.c.id)
                .where(audit_log.c.at < cutoff)
                .order_by(audit_log.c.at, audit_log.c.id)
                .limit(limit)
            )
        ).scalars()
    )
    if ids:
        await conn.execute(audit_log.delete().where(audit_log.c.id.in_(ids)))
    return len(ids)
