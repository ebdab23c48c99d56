"""Folder synchronization over IMAP: checkpoints, batches, resync, the watch loop.

The caller owns storage and injects it: ``load_checkpoint(folder)`` and
``save_checkpoint(folder, checkpoint)`` keep a :class:`Checkpoint` (UIDVALIDITY and the
highest UID handled), and ``handle(batch)`` ingests a :class:`FetchBatch` (it must be
idempotent on Message-ID: ``parse.parse_message`` and the store's unique
``(channel, external_id)`` make it so).

- **Incremental**: UIDs above the checkpoint, ascending, in batches; after each batch is
  handled the checkpoint moves to its highest UID. A crash between fetch and save
  fetches that batch again on the next run, and ingestion drops the copies: each
  message is stored exactly once (RELIABILITY 25). Nothing new gives no batch at all.
- **First sync** (no checkpoint): messages SINCE a date (all without one), newest
  first, so agents see recent mail at once; the checkpoint is saved when it is done
  (a crash repeats it; ingestion dedups).
- **UIDVALIDITY changed**: every remembered UID is void (RFC 4549 4.1); the folder is
  read again like a first sync with ``resync=True`` on every batch and on the result
  (the caller's Message-ID dedup keeps it free of duplicates, RELIABILITY 23).

:func:`watch_folder` runs this forever: connect, sync, wait (IDLE or polling), sync
again; on connection errors it reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import date

from channels.email.backoff import Backoff, sleep_unless
from channels.email.errors import ImapError
from channels.email.imap import FetchedMessage, ImapClient, ImapConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a folder is read: UIDs up to ``last_uid`` of this ``uidvalidity``."""

    uidvalidity: int
    last_uid: int


@dataclasses.dataclass(frozen=True, slots=True)
class FetchBatch:
    """Messages fetched together; ``messages`` are ``(uid, raw bytes)`` pairs."""

    folder: str
    uidvalidity: int
    messages: tuple[FetchedMessage, ...]
    #: Part of a first sync (newest first) rather than an incremental one (ascending).
    initial: bool = False
    #: Part of a full resync after a UIDVALIDITY change: known messages come again.
    resync: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class SyncResult:
    """What one :func:`sync_folder` run did."""

    folder: str
    checkpoint: Checkpoint
    fetched: int
    initial: bool = False
    #: The folder's UIDVALIDITY changed: it was read again from the start.
    resync: bool = False


LoadCheckpoint = Callable[[str], Awaitable[Checkpoint | None]]
SaveCheckpoint = Callable[[str, Checkpoint], Awaitable[None]]
Handle = Callable[[FetchBatch], Awaitable[None]]
Connect = Callable[[ImapConfig], Awaitable[ImapClient]]


def _chunks(items: Sequence[int], size: int) -> list[Sequence[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def sync_folder(
    client: ImapClient,
    folder: str,
    *,
    load_checkpoint: LoadCheckpoint,
    save_checkpoint: SaveCheckpoint,
    handle: Handle,
    since: date | None = None,
    batch_size: int = 50,
) -> SyncResult:
    """Bring ``folder`` up to date once (see the module docstring; RFC 3501, RFC 4549).

    ``since`` bounds the first sync and a resync (IMAP SEARCH SINCE, a day). Errors of
    ``handle`` propagate and leave the checkpoint where the last handled batch put it.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    state = await client.select(folder)
    checkpoint = await load_checkpoint(folder)
    if checkpoint is not None and checkpoint.uidvalidity == state.uidvalidity:
        uids = await client.uids_after(checkpoint.last_uid)
        fetched = 0
        for chunk in _chunks(uids, batch_size):
            messages = await client.fetch(chunk)
            fetched += len(messages)
            if messages:
                await handle(FetchBatch(folder, state.uidvalidity, tuple(messages)))
            checkpoint = Checkpoint(state.uidvalidity, max(chunk))
            await save_checkpoint(folder, checkpoint)
        if fetched:
            log.info("IMAP %s: %d new message(s)", folder, fetched)
        return SyncResult(folder, checkpoint, fetched)

    resync = checkpoint is not None
    if resync:
        log.warning(
            "IMAP %s: UIDVALIDITY changed (%s -> %s), reading the folder again",
            folder,
            checkpoint.uidvalidity if checkpoint else None,
            state.uidvalidity,
        )
    uids = await client.uids_since(since)
    fetched = 0
    async for messages in client.fetch_batches(uids, batch_size):
        fetched += len(messages)
        await handle(FetchBatch(folder, state.uidvalidity, tuple(messages), True, resync))
    # Everything below UIDNEXT was either read or is older than ``since``.
    last_uid = max([*uids, (state.uidnext or 1) - 1, 0])
    checkpoint = Checkpoint(state.uidvalidity, last_uid)
    await save_checkpoint(folder, checkpoint)
    log.info("IMAP %s: first sync read %d message(s)", folder, fetched)
    return SyncResult(folder, checkpoint, fetched, initial=True, resync=resync)


async def watch_folder(
    config: ImapConfig,
    folder: str,
    *,
    load_checkpoint: LoadCheckpoint,
    save_checkpoint: SaveCheckpoint,
    handle: Handle,
    stop: asyncio.Event,
    since: date | None = None,
    idle_timeout: float = 25 * 60,
    poll_interval: float = 60.0,
    backoff: Backoff = Backoff(base=1.0, maximum=300.0),  # noqa: B008 - frozen, immutable
    connect: Connect = ImapClient.connect,
    on_sync: Callable[[SyncResult], Awaitable[None]] | None = None,
) -> None:
    """Follow ``folder`` until ``stop`` is set: sync, wait for mail (IDLE/poll), repeat.

    Connection, login and command failures are logged and retried after a backoff
    that grows while they persist and resets after a good connection; errors of
    ``handle`` (the caller's) propagate. ``on_sync`` sees each :class:`SyncResult`.
    """
    attempt = 0
    while not stop.is_set():
        try:
            client = await connect(config)
            try:
                attempt = 0
                while not stop.is_set():
                    result = await sync_folder(
                        client,
                        folder,
                        load_checkpoint=load_checkpoint,
                        save_checkpoint=save_checkpoint,
                        handle=handle,
                        since=since,
                    )
                    if on_sync is not None:
                        await on_sync(result)
                    await client.wait_for_change(
                        idle_timeout, poll_interval=poll_interval, stop=stop
                    )
            finally:
                await client.close()
        except ImapError as exc:
            delay = backoff.delay(attempt)
            attempt += 1
            log.warning("IMAP %s: %s; reconnecting in %.1f s", folder, exc, delay)
            await sleep_unless(stop, delay)
