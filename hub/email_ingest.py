"""Email in: IMAP folders to the timeline.

For each folder of ``IMAP_MAILBOXES`` and the Sent folder (mail an agent sent from
another client shows as outbound), ``channels.email.mailsync.watch_folder`` syncs from
a checkpoint kept in the database (first sync bounded by ``IMAP_SYNC_DAYS``, newest
first), then waits with IDLE (or polls), reconnecting with backoff. Each fetched batch
is parsed (``channels.email.parse``), threaded against the stored thread keys, and
ingested in ONE transaction with its threading decisions and bounce records; the
checkpoint moves only after that commit, so a crash between fetch and commit fetches
the batch again and the unique ``(channel, external_id)`` keeps one copy of each.

Delivery reports (RFC 3464) never show as a customer's reply: they are system events
on the bounced address's timeline, move our original message to ``bounced`` (or
``delayed``), and a hard bounce marks the address undeliverable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import date, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from channels.email.imap import ImapClient, ImapConfig
from channels.email.mailsync import Checkpoint, FetchBatch, SyncResult, sync_folder, watch_folder
from channels.email.parse import ParsedEmail, parse_message
from channels.email.threading import assign_thread
from config import Settings
from hub.services import Services
from timeline import mailstore
from timeline.events import Direction, Event, utcnow
from timeline.ingest import IngestResult, ingest_batch

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def our_addresses(settings: Settings) -> list[str]:
    """The addresses that are ours: SMTP_FROM and the IMAP login when it is an address."""
    ours = []
    for value in (settings.smtp_from, settings.imap_username):
        if value and "@" in value:
            ours.append(value.split("<")[-1].rstrip(">").strip())
    return ours


class MailIngest:
    """Turns fetched batches into timeline events, checkpoints in the database."""

    def __init__(self, services: Services, *, progress: Progress | None = None) -> None:
        self.services = services
        self.ours = our_addresses(services.settings)
        self.progress = progress
        self.sent_folder: str | None = None
        self.stored = 0

    async def load_checkpoint(self, folder: str) -> Checkpoint | None:
        """The folder's checkpoint from the database."""
        async with self.services.db.read() as conn:
            found = await mailstore.load_checkpoint(conn, folder)
        return None if found is None else Checkpoint(*found)

    async def save_checkpoint(self, folder: str, checkpoint: Checkpoint) -> None:
        """Store the folder's checkpoint (after its batch committed)."""
        async with self.services.db.write() as conn:
            await mailstore.save_checkpoint(
                conn, folder, checkpoint.uidvalidity, checkpoint.last_uid
            )

    async def handle(self, batch: FetchBatch) -> None:
        """Parse, thread and ingest one batch in one transaction."""
        is_sent = batch.folder == self.sent_folder
        parsed = [
            parse_message(raw, our_addresses=self.ours, folder_is_sent=is_sent)
            for _, raw in batch.messages
        ]
        for item in parsed:
            if item.warnings:
                log.info("parsed %s with %d warnings", batch.folder, len(item.warnings))
        async with self.services.db.write() as conn:
            result = await self._ingest(conn, parsed)
        for stored in result.changed:
            self.services.publisher.publish("timeline", stored)
        created = result.count("created")
        self.stored += created
        if self.progress:
            self.progress(batch.folder, len(batch.messages), created)
        log.info(
            "mail %s: %d fetched, %d new%s",
            batch.folder,
            len(batch.messages),
            created,
            " (resync)" if batch.resync else "",
        )

    async def _ingest(self, conn: AsyncConnection, parsed: list[ParsedEmail]) -> IngestResult:
        events: list[Event] = []
        # Threads within the batch see each other: decisions are remembered as we go.
        for item in parsed:
            decision = await assign_thread(
                item.thread, lambda keys: mailstore.known_threads(conn, keys)
            )
            await mailstore.remember_thread(
                conn, decision.key, decision.new_ids, decision.subject_key
            )
            for event in item.events():
                events.append(
                    dataclasses.replace(event, thread_key=decision.key)
                    if event.external_id == item.message_id
                    else event
                )
        result = await ingest_batch(
            conn, events, region=self.services.settings.default_region, files=self.services.files
        )
        for item in parsed:
            await self._bounces(conn, item, result)
        return result

    async def _bounces(
        self, conn: AsyncConnection, item: ParsedEmail, result: IngestResult
    ) -> None:
        report = item.report
        if report is None:
            if item.event.direction is Direction.INBOUND and item.event.sender is not None:
                await mailstore.clear_bounce(conn, item.event.sender.value.lower())
            return
        event_id = next(
            (
                o.event.id
                for o in result.outcomes
                if o.event is not None and o.event.external_id == item.message_id
            ),
            None,
        )
        for recipient in report.failed:
            if not recipient.address:
                continue
            await mailstore.record_bounce(
                conn,
                recipient.address.lower(),
                hard=recipient.hard,
                status=recipient.status,
                event_id=event_id,
                at=item.event.occurred_at,
            )

    def since(self) -> date:
        """The oldest day a first sync reads."""
        return (utcnow() - timedelta(days=self.services.settings.imap_sync_days)).date()

    async def folders(self, client: ImapClient) -> list[str]:
        """IMAP_MAILBOXES plus the Sent folder, if the server has one."""
        folders = list(self.services.settings.imap_mailboxes)
        self.sent_folder = await client.find_sent_folder()
        if self.sent_folder and self.sent_folder not in folders:
            folders.append(self.sent_folder)
        return folders

    async def sync_once(self, config: ImapConfig) -> list[SyncResult]:
        """One sync of every folder (the ``mail sync`` command and tests)."""
        results = []
        async with await ImapClient.connect(config) as client:
            for folder in await self.folders(client):
                results.append(
                    await sync_folder(
                        client,
                        folder,
                        load_checkpoint=self.load_checkpoint,
                        save_checkpoint=self.save_checkpoint,
                        handle=self.handle,
                        since=self.since(),
                    )
                )
        return results

    async def watch(self, config: ImapConfig, stop: asyncio.Event) -> None:
        """Follow every folder until ``stop`` is set (the worker)."""
        async with await ImapClient.connect(config) as client:
            folders = await self.folders(client)
        await asyncio.gather(
            *(
                watch_folder(
                    config,
                    folder,
                    load_checkpoint=self.load_checkpoint,
                    save_checkpoint=self.save_checkpoint,
                    handle=self.handle,
                    stop=stop,
                    since=self.since(),
                )
                for folder in folders
            )
        )
