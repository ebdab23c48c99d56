"""Email in: IMAP folders to the timeline.

For each folder of ``IMAP_MAILBOXES`` and the Sent folder (mail an agent sent from
another client shows as outbound), ``channels.email.mailsync.watch_folder`` syncs from
a checkpoint kept in the database (first sync bounded by ``IMAP_SYNC_DAYS``, newest
first), then waits with IDLE (or polls), reconnecting with backoff. Each fetched batch
(up to 250 messages, fetched while the previous one is stored) is parsed
(``channels.email.parse``; big batches in worker processes, the parse being pure and
CPU-bound), threaded against the stored thread keys with one query, and ingested with
``timeline.ingest.ingest_batch`` in ONE transaction with its threading decisions,
bounce records and the folder's checkpoint (or first-sync progress): a sync killed at
any point resumes after the last committed batch, and the unique ``(channel,
external_id)`` keeps one copy of each message even if a server repeats some.

Delivery reports (RFC 3464) never show as a customer's reply: they are system events
on the bounced address's timeline, move our original message to ``bounced`` (or
``delayed``), and a hard bounce marks the address undeliverable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import date, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from channels.email.imap import FetchedMessage, ImapClient, ImapConfig
from channels.email.mailsync import (
    FETCH_BATCH,
    Checkpoint,
    FetchBatch,
    FirstSyncProgress,
    SyncResult,
    SyncState,
    sync_folder,
    watch_folder,
)
from channels.email.parse import ParsedEmail, parse_messages
from channels.email.threading import decide_thread, remember
from config import Settings
from hub.services import Services
from timeline import mailstore
from timeline.events import Direction, Event, Identity, IdentityKind, utcnow
from timeline.ingest import IngestResult, ingest_batch

log = logging.getLogger(__name__)

#: ``progress(folder, read so far, to read in this pass, stored new by this batch)``.
Progress = Callable[[str, int, int, int], None]
#: Batches at least this big are parsed in worker processes (when there are 2+ cores).
PARALLEL_FROM = 50

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

    def __init__(
        self,
        services: Services,
        *,
        progress: Progress | None = None,
        parse_processes: int | None = None,
        batch_size: int = FETCH_BATCH,
    ) -> None:
        self.services = services
        self.ours = our_addresses(services.settings)
        self.progress = progress
        self.sent_folder: str | None = None
        self.stored = 0
        #: Messages per FETCH and per transaction.
        self.batch_size = batch_size
        cores = os.cpu_count() or 1
        #: Worker processes for parsing big batches; 0 parses on the event loop.
        self.parse_processes = (
            parse_processes if parse_processes is not None else (min(cores, 4) if cores > 1 else 0)
        )
        self._pool: ProcessPoolExecutor | None = None

    async def load_checkpoint(self, folder: str) -> SyncState | None:
        """The folder's checkpoint, or the progress of its unfinished first sync."""
        async with self.services.db.read() as conn:
            found = await mailstore.load_checkpoint(conn, folder)
            first = await mailstore.load_first_sync(conn, folder)
        if first is not None:
            return FirstSyncProgress(*first, resync=found is not None)
        return None if found is None else Checkpoint(*found)

    async def save_checkpoint(self, folder: str, state: SyncState) -> None:
        """Store a state no batch carried (nothing to read, a batch that came back empty)."""
        async with self.services.db.write() as conn:
            await self._save_state(conn, folder, state)

    async def _save_state(self, conn: AsyncConnection, folder: str, state: SyncState) -> None:
        if isinstance(state, Checkpoint):
            await mailstore.save_checkpoint(conn, folder, state.uidvalidity, state.last_uid)
        else:
            await mailstore.save_first_sync(conn, folder, state.uidvalidity, state.top, state.below)

    async def parse_batch(self, batch: FetchBatch) -> list[ParsedEmail]:
        """The batch parsed: started by :meth:`prepare` when it was fetched, else now."""
        if batch.prepared is not None:
            parsed: list[ParsedEmail] = await batch.prepared
            return parsed
        return await self.prepare(batch.folder, batch.messages)

    async def prepare(self, folder: str, messages: Sequence[FetchedMessage]) -> list[ParsedEmail]:
        """Parse messages; many in worker processes, in order. Never raises on bad mail."""
        raws = [raw for _, raw in messages]
        parse = functools.partial(
            parse_messages,
            our_addresses=tuple(self.ours),
            folder_is_sent=folder == self.sent_folder,
        )
        if len(raws) < PARALLEL_FROM or self.parse_processes < 1:
            return parse(raws)
        if self._pool is None:
            # spawn: a clean interpreter, not a fork of a process with threads and a loop.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.parse_processes, mp_context=context)
        loop = asyncio.get_running_loop()
        step = -(-len(raws) // (self.parse_processes * 2))
        parts = [raws[i : i + step] for i in range(0, len(raws), step)]
        try:
            done = await asyncio.gather(
                *(loop.run_in_executor(self._pool, parse, part) for part in parts)
            )
        except BrokenProcessPool:
            # A worker died (out of memory, killed): parse here, start afresh next time.
            log.warning("a mail parsing process died; parsing this batch in the hub")
            await self.close()
            return parse(raws)
        return [item for part in done for item in part]

    async def close(self) -> None:
        """Stop the parsing processes (they start again when a big batch comes).

        Work already handed to them finishes (another folder's watcher may be waiting
        for it); a parse started after this gets a new pool.
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True)

    async def handle(self, batch: FetchBatch) -> None:
        """Parse, thread and ingest one batch and store its sync state: one transaction."""
        parsed = await self.parse_batch(batch)
        warned = sum(1 for item in parsed if item.warnings)
        if warned:
            log.info("mail %s: %d message(s) parsed with warnings", batch.folder, warned)
        await self._write_files(parsed)
        async with self.services.db.write() as conn:
            # Only new mail proves an address works again; a first sync or a resync
            # also reads old mail from before a bounce.
            result = await self._ingest(
                conn, parsed, lift_bounces=not (batch.initial or batch.resync)
            )
            if batch.state is not None:
                await self._save_state(conn, batch.folder, batch.state)
        for stored in result.changed:
            self.services.publisher.publish("timeline", stored)
        created = result.count("created")
        self.stored += created
        if self.progress:
            self.progress(batch.folder, batch.done, batch.total, created)
        log.info(
            "mail %s: %d of %d read, %d new%s",
            batch.folder,
            batch.done,
            batch.total,
            created,
            " (resync)" if batch.resync else "",
        )

    async def _write_files(self, parsed: list[ParsedEmail]) -> None:
        """Write the batch's attachment files in a thread, before its transaction.

        Each file is fsynced; done inside ``ingest_batch`` that would stall the event loop
        and hold SQLite's write lock for every other writer meanwhile. The store is
        content-addressed, so ingest then finds them stored, and a batch that fails to
        commit leaves only files no row refers to, never a half-written document.
        """
        files = self.services.files
        contents = [
            att.content
            for item in parsed
            for att in item.event.attachments
            if att.content is not None
        ]
        if contents:
            await asyncio.to_thread(lambda: [files.put(content) for content in contents])

    async def _ingest(
        self, conn: AsyncConnection, parsed: list[ParsedEmail], *, lift_bounces: bool = True
    ) -> IngestResult:
        events = await self.decide_threads(conn, parsed)
        return await self.store_batch(conn, parsed, events, lift_bounces=lift_bounces)

    async def decide_threads(self, conn: AsyncConnection, parsed: list[ParsedEmail]) -> list[Event]:
        """The batch's events with their threads, decided with one lookup and stored.

        Decisions are made in memory (later messages of the batch see earlier ones) on
        what the store knows; then two statements remember them (RFC 5322 3.6.4 ids,
        the subject key) and a thread that turned out to be part of another is renamed.
        """
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
        return events

    async def store_batch(
        self,
        conn: AsyncConnection,
        parsed: list[ParsedEmail],
        events: list[Event],
        *,
        lift_bounces: bool = True,
    ) -> IngestResult:
        """Store the events (``timeline.ingest.ingest_batch``) and the bounces they report."""
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
        try:
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
                            batch_size=self.batch_size,
                            prepare=self.prepare,
                        )
                    )
        finally:
            await self.close()
        return results

    async def watch(self, config: ImapConfig, stop: asyncio.Event) -> None:
        """Follow every folder until ``stop`` is set (the worker)."""
        async with await ImapClient.connect(config) as client:
            folders = await self.folders(client)

        async def synced(result: SyncResult) -> None:
            if result.initial:  # the big reads are done: free the parsing processes
                await self.close()

        try:
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
                        batch_size=self.batch_size,
                        prepare=self.prepare,
                        on_sync=synced,
                    )
                    for folder in folders
                )
            )
        finally:
            await self.close()
