"""The retention worker job: applies the ``HUB_RETENTION_*`` settings (0 = keep forever).

GDPR Art. 5(1)(e) (storage limitation). Every run works in batches of :data:`BATCH`
rows, one transaction each, at most :data:`MAX_BATCHES` per kind, so a large backlog is
worked off over several runs without holding the database:

- ``HUB_RETENTION_FILES_DAYS``: files of documents (uploads, email attachments, MMS media)
  older than that are deleted from ``HUB_DATA_DIR`` after the commit that marks their
  documents ``purged_at`` (the row is the tombstone); a file still used by a kept
  document (same content) stays.
- ``HUB_RETENTION_RECORDINGS_DAYS``: recordings of older calls are deleted at the
  provider (``TwilioClient.delete_recording``: ``DELETE .../Recordings/{sid}.json``,
  https://www.twilio.com/docs/voice/api/recording#delete-a-recording-resource; 204, or
  404 if already gone), then the call's event keeps only a marker. A recording the
  provider did not delete stays referenced and is tried again next run. Without Twilio
  settings, recordings are left alone (their copies are at the provider).
- ``HUB_RETENTION_PROVIDER_DATA_DAYS``: caller location and caller name fields are
  removed from older SMS and call events (``timeline.retention.PROVIDER_DATA_KEYS``).
- ``HUB_RETENTION_AUDIT_DAYS``: older audit records are deleted.

Each run that changed something logs its counts and writes a ``retention.applied`` audit
record with them.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta

from channels.twilio.client import TwilioClient
from channels.twilio.errors import ApiError
from hub import audit
from hub.services import Services
from timeline import retention
from timeline.events import utcnow

log = logging.getLogger(__name__)

BATCH = 500
MAX_BATCHES = 20
#: Seconds between runs (``hub.workers.base_jobs``).
EVERY = 3600.0


@dataclasses.dataclass
class Report:
    """What one run did."""

    documents: int = 0
    files_deleted: int = 0
    recordings_deleted: int = 0
    recordings_failed: int = 0
    provider_data: int = 0
    audit_records: int = 0

    def changed(self) -> bool:
        """Whether anything was done (or tried)."""
        return any(dataclasses.astuple(self))


def _cutoff(now: datetime, days: int) -> datetime | None:
    return now - timedelta(days=days) if days > 0 else None


async def _files(services: Services, cutoff: datetime, now: datetime, report: Report) -> None:
    db, files = services.db, services.files
    for _ in range(MAX_BATCHES):
        async with db.write() as conn:
            marked, unused = await retention.purge_document_files(conn, cutoff, now, BATCH)
        report.documents += marked
        for sha in unused:
            # A new document with the same content may have arrived since the commit.
            async with db.read() as conn:
                if await retention.is_file_used(conn, sha):
                    continue
            if files.exists(sha):
                files.delete(sha)
                report.files_deleted += 1
        if marked < BATCH:
            return


async def _recordings(services: Services, cutoff: datetime, now: datetime, report: Report) -> None:
    settings = services.settings
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        log.warning("recording retention is set but Twilio is not: recordings left alone")
        return
    after = ""
    async with TwilioClient.from_settings(settings) as twilio:
        for _ in range(MAX_BATCHES):
            async with services.db.read() as conn:
                due = await retention.due_recordings(conn, cutoff, BATCH, after=after)
            for item in due:
                try:
                    await twilio.delete_recording(item.sid)  # 404 (already gone) included
                except ApiError as exc:
                    log.warning("recording %s not deleted by the provider: %s", item.sid, exc)
                    report.recordings_failed += 1
                    continue
                async with services.db.write() as conn:
                    if await retention.mark_recording_deleted(conn, item.event_id, now):
                        report.recordings_deleted += 1
            if len(due) < BATCH:
                return
            after = due[-1].event_id


async def apply(services: Services, *, now: datetime | None = None) -> Report:
    """One retention run over every kind that has a period set."""
    settings = services.settings
    now = now or utcnow()
    report = Report()
    cutoff = _cutoff(now, settings.retention_files_days)
    if cutoff is not None:
        await _files(services, cutoff, now, report)
    cutoff = _cutoff(now, settings.retention_recordings_days)
    if cutoff is not None:
        await _recordings(services, cutoff, now, report)
    cutoff = _cutoff(now, settings.retention_provider_data_days)
    if cutoff is not None:
        for _ in range(MAX_BATCHES):
            async with services.db.write() as conn:
                done = await retention.strip_provider_data(conn, cutoff, now, BATCH)
            report.provider_data += done
            if done < BATCH:
                break
    cutoff = _cutoff(now, settings.retention_audit_days)
    if cutoff is not None:
        for _ in range(MAX_BATCHES):
            async with services.db.write() as conn:
                done = await retention.delete_audit_records(conn, cutoff, BATCH)
            report.audit_records += done
            if done < BATCH:
                break
    if report.changed():
        counts = dataclasses.asdict(report)
        log.info("retention: %s", ", ".join(f"{key}={value}" for key, value in counts.items()))
        await audit.record(services.db, "retention.applied", detail=counts)
    return report


async def retention_job(services: Services) -> None:
    """The worker job (``hub.workers.base_jobs``)."""
    await apply(services)
