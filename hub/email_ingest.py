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
from channels.email.threading import decide_thread, remember
from config import Settings
from hub.services import Services
from timeline import mailstore
from timeline.events import Direction, Event, Identity, IdentityKind, utcnow
from timeline.ingest import IngestResult, ingest_batch

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

#: Where mail without a usable From address is kept (RFC 2606 reserves ``.invalid``).
UNKNOWN_SENDER = Identity(IdentityKind.EMAIL, "unknown-sender@commhub.invalid")


def our_addresses(settings: Settings) -> list[str]:
    """The addresses that are ours: SMTP_FROM and the IMAP login when it is an address."""
    ours = []
    for value in (settings.smtp_from, settings.imap_username):
        if value and "@" in value:
            ours.append(value.split("<")[-1].rstrip(">").strip())
    return ours


def _resolve(renamed: dict[str, str], key: str | None) -> str:
    seen = set()
    while key in renamed and key not in seen:
        seen.add(key)
        key = renamed[key]
    assert key is not None
    return key


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
            # Only new mail proves an address works again; a first sync or a resync
            # also reads old mail from before a bounce.
            result = await self._ingest(
                conn, parsed, lift_bounces=not (batch.initial or batch.resync)
            )
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

    async def _ingest(
        self, conn: AsyncConnection, parsed: list[ParsedEmail], *, lift_bounces: bool = True
    ) -> IngestResult:
        # Threading for the whole batch: one lookup, decisions in memory (later messages
        # of the batch see earlier ones), then two statements to store them.
        keys = {k for item in parsed for k in item.thread.lookup_keys()}
        table = await mailstore.known_threads(conn, sorted(keys))
        new_ids: dict[str, str] = {}
        subjects: dict[str, str] = {}
        events: list[Event] = []
        renamed: dict[str, str] = {}
        for item in parsed:
            decision = decide_thread(item.thread, table)
            # A message known by its own id (a reply to it came first) whose ancestor is
            # in another thread joins the two: the ancestor's thread absorbs the other.
            joined = next(
                (
                    table[a]
                    for a in item.thread.ancestors
                    if a in table and table[a] != decision.key
                ),
                None,
            )
            if joined is not None:
                renamed[decision.key] = joined
                for key, thread in list(table.items()):
                    if thread == decision.key:
                        table[key] = joined
                decision = dataclasses.replace(decision, key=joined)
            remember(table, decision)
            for message_id in decision.new_ids:
                new_ids.setdefault(message_id, decision.key)
            if decision.subject_key:
                subjects[decision.subject_key] = decision.key
            for event in item.events():
                if event.external_id == item.message_id:
                    event = dataclasses.replace(event, thread_key=decision.key)
                if (
                    not event.update_only
                    and event.customer_id is None
                    and event.counterpart is None
                ):
                    # No usable address: keep the message, on the unknown sender's timeline.
                    if event.direction is Direction.INBOUND:
                        event = dataclasses.replace(event, sender=UNKNOWN_SENDER)
                    else:
                        event = dataclasses.replace(event, recipient=UNKNOWN_SENDER)
                events.append(event)
        for old_key, new_key in renamed.items():
            await mailstore.rename_thread(conn, old_key, new_key)
        new_ids = {k: _resolve(renamed, t) for k, t in new_ids.items()}
        subjects = {k: _resolve(renamed, t) for k, t in subjects.items()}
        events = [
            dataclasses.replace(e, thread_key=_resolve(renamed, e.thread_key))
            if e.thread_key in renamed
            else e
            for e in events
        ]
        await mailstore.remember_threads(conn, new_ids, subjects)
        result = await ingest_batch(
            conn, events, region=self.services.settings.default_region, files=self.services.files
        )
        for outcome in result.outcomes:
            if outcome.kind == "rejected":
                log.warning("a message was not stored: %s", outcome.reason)
        await self._bounces(conn, parsed, result, lift=lift_bounces)
        return result

    async def _bounces(
        self, conn: AsyncConnection, parsed: list[ParsedEmail], result: IngestResult, *, lift: bool
    ) -> None:
        created = {
            o.event.external_id: o.event
            for o in result.outcomes
            if o.kind == "created" and o.event is not None
        }
        if lift:
            mail_from = {
                e.sender.lower()
                for e in created.values()
                if e.direction == Direction.INBOUND.value and e.kind == "message" and e.sender
            }
            await mailstore.clear_bounces(conn, mail_from)
        for item in parsed:
            report = item.report
            if report is None or item.message_id not in created:
                continue
            for recipient in report.failed:
                if not recipient.address:
                    continue
                await mailstore.record_bounce(
                    conn,
                    recipient.address.lower(),
                    hard=recipient.hard,
                    status=recipient.status,
                    event_id=created[item.message_id].id,
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
