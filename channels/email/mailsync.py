"""Folder synchronization over IMAP: checkpoints, batches, resync, the watch loop.

The caller owns storage and injects it: ``load_checkpoint(folder)`` returns the folder's
:data:`SyncState` (a :class:`Checkpoint`: UIDVALIDITY and the highest UID handled; or a
:class:`FirstSyncProgress` of a first sync that was cut off), and ``handle(batch)``
ingests a :class:`FetchBatch` **and stores** ``batch.state`` **in the same
transaction**: a killed sync then resumes exactly after the last stored batch, without
loss or duplicates (RELIABILITY 25). ``save_checkpoint(folder, state)`` is only called
for a state no batch carries (a folder with nothing to read, a batch that came back
empty). Ingestion must still be idempotent on Message-ID (``parse.parse_message`` and
the store's unique ``(channel, external_id)``), for a server that reuses UIDs wrongly.

- **Incremental**: UIDs above the checkpoint, ascending; each batch carries the
  checkpoint of its highest UID. Nothing new gives no batch at all.
- **First sync** (no checkpoint): messages SINCE a date (all without one), newest
  first, so agents see recent mail at once. Each batch carries a
  :class:`FirstSyncProgress` (everything from its lowest UID up is stored) and the last
  one the final checkpoint (the highest UID when the sync began: later mail is then
  read incrementally). A first sync that was cut off goes on below the progress.
- **UIDVALIDITY changed**: every remembered UID is void (RFC 4549 4.1); the folder is
  read again like a first sync with ``resync=True`` on every batch and on the result
  (the caller's Message-ID dedup keeps it free of duplicates, RELIABILITY 23).

Fetching is pipelined: batches of up to :data:`FETCH_BATCH` messages (and
:data:`FETCH_BYTES`, from the sizes asked for first) are fetched as UID ranges while the
previous batch is handled, at most :data:`PREFETCH` batches ahead, so memory follows
the batch and not the mailbox.

:func:`watch_folder` runs this forever: connect, sync, wait (IDLE or polling), sync
again; on connection errors it reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from datetime import date
from typing import Any

from channels.email.backoff import Backoff, sleep_unless
from channels.email.errors import ImapError
from channels.email.imap import FetchedMessage, ImapClient, ImapConfig

log = logging.getLogger(__name__)

#: Messages per UID FETCH (one round trip; the batch handled in one transaction). More
#: would risk aioimaplib 2.0's parser, which recurses once per response line of a read
#: (up to 256 KiB): hundreds of tiny messages in one read exceed Python's recursion limit.
FETCH_BATCH = 250
#: Bytes per UID FETCH at most (by RFC822.SIZE), so big attachments make small batches.
FETCH_BYTES = 32 * 2**20
#: Batches fetched ahead of the one being handled.
PREFETCH = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a folder is read: UIDs up to ``last_uid`` of this ``uidvalidity``."""

    uidvalidity: int
    last_uid: int


@dataclasses.dataclass(frozen=True, slots=True)
class FirstSyncProgress:
    """A first sync (newest first) under way: what a resumed one needs."""

    uidvalidity: int
    #: The highest UID when the first sync began: the checkpoint once it is done.
    top: int
    #: Every message of the first sync with a UID from ``below`` up is stored.
    below: int
    #: It is a resync after a UIDVALIDITY change (known messages come again).
    resync: bool = False


SyncState = Checkpoint | FirstSyncProgress


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
    #: Store this with the batch, in its transaction (see the module docstring).
    state: SyncState | None = None
    #: Messages of this sync pass read so far (this batch included), and in all.
    done: int = 0
    total: int = 0
    #: What ``prepare`` (of :func:`sync_folder`) made of the messages, started when they
    #: arrived, while the batch before was being handled.
    prepared: asyncio.Future[Any] | None = dataclasses.field(
        default=None, compare=False, repr=False
    )


@dataclasses.dataclass(frozen=True, slots=True)
class SyncResult:
    """What one :func:`sync_folder` run did."""

    folder: str
    checkpoint: Checkpoint
    fetched: int
    initial: bool = False
    #: The folder's UIDVALIDITY changed: it was read again from the start.
    resync: bool = False


LoadCheckpoint = Callable[[str], Awaitable[SyncState | None]]
SaveCheckpoint = Callable[[str, SyncState], Awaitable[None]]
Handle = Callable[[FetchBatch], Awaitable[None]]
Connect = Callable[[ImapConfig], Awaitable[ImapClient]]
Prepare = Callable[[str, tuple[FetchedMessage, ...]], Awaitable[Any]]
Fetched = tuple[Sequence[int], tuple[FetchedMessage, ...], "asyncio.Future[Any] | None"]


async def _plan(client: ImapClient, uids: Sequence[int], batch_size: int) -> list[Sequence[int]]:
    """``uids`` (in their order) cut into batches by count and, for many, by size."""
    if len(uids) <= 1:
        return [uids] if uids else []
    sizes = await client.sizes(uids) if len(uids) > 8 else {}
    batches: list[Sequence[int]] = []
    current: list[int] = []
    weight = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if current and (len(current) >= batch_size or weight + size > FETCH_BYTES):
            batches.append(current)
            current, weight = [], 0
        current.append(uid)
        weight += size
    batches.append(current)
    return batches


async def _prefetched(
    client: ImapClient,
    folder: str,
    batches: Sequence[Sequence[int]],
    prepare: Prepare | None,
    ahead: int = PREFETCH,
) -> AsyncGenerator[Fetched, None]:
    """Each batch with its messages, the next ones fetched (and prepared) meanwhile."""
    queue: asyncio.Queue[Fetched | BaseException] = asyncio.Queue(maxsize=max(ahead, 1))

    async def produce() -> None:
        try:
            for uids in batches:
                messages = tuple(await client.fetch(uids))
                prepared = None
                if prepare is not None and messages:
                    prepared = asyncio.ensure_future(prepare(folder, messages))
                await queue.put((uids, messages, prepared))
        except Exception as exc:  # handed to the consumer, raised there
            await queue.put(exc)

    producer = asyncio.create_task(produce())
    try:
        for _ in batches:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        while not queue.empty():
            left = queue.get_nowait()
            if not isinstance(left, BaseException) and left[2] is not None:
                left[2].cancel()


async def sync_folder(
    client: ImapClient,
    folder: str,
    *,
    load_checkpoint: LoadCheckpoint,
    save_checkpoint: SaveCheckpoint,
    handle: Handle,
    since: date | None = None,
    batch_size: int = FETCH_BATCH,
    prepare: Prepare | None = None,
) -> SyncResult:
    """Bring ``folder`` up to date once (see the module docstring; RFC 3501, RFC 4549).

    ``since`` bounds the first sync and a resync (IMAP SEARCH SINCE, a day). Errors of
    ``handle`` propagate; what the handled batches stored (with their states) stays.
    ``prepare(folder, messages)`` (parsing, say) is started for each batch as soon as
    it is fetched; ``handle`` finds it in ``FetchBatch.prepared``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    state = await client.select(folder)
    validity = state.uidvalidity
    saved = await load_checkpoint(folder)
    if isinstance(saved, Checkpoint) and saved.uidvalidity == validity:
        uids = await client.uids_after(saved.last_uid)
        checkpoint = saved
        fetched = 0
        planned = await _plan(client, uids, batch_size)
        # aclosing: an error of ``handle`` stops the prefetching at once, not at GC.
        async with contextlib.aclosing(_prefetched(client, folder, planned, prepare)) as got:
            async for chunk, messages, prepared in got:
                fetched += len(messages)
                checkpoint = Checkpoint(validity, max(chunk))
                if messages:
                    await handle(
                        FetchBatch(
                            folder,
                            validity,
                            messages,
                            state=checkpoint,
                            done=fetched,
                            total=len(uids),
                            prepared=prepared,
                        )
                    )
                else:
                    await save_checkpoint(folder, checkpoint)
        if fetched:
            log.info("IMAP %s: %d new message(s)", folder, fetched)
        return SyncResult(folder, checkpoint, fetched)

    if isinstance(saved, FirstSyncProgress) and saved.uidvalidity == validity:
        resync, top = saved.resync, saved.top
        uids = [u for u in await client.uids_since(since) if u < saved.below]
        log.info("IMAP %s: resuming the first sync, %d message(s) left", folder, len(uids))
    else:
        resync = saved is not None
        if resync:
            log.warning(
                "IMAP %s: UIDVALIDITY changed (%s -> %s), reading the folder again",
                folder,
                saved.uidvalidity if saved else None,
                validity,
            )
        uids = await client.uids_since(since)
        # Everything up to here is either read now or older than ``since``.
        top = max([*uids, (state.uidnext or 1) - 1, 0])
        log.info("IMAP %s: first sync of %d message(s), newest first", folder, len(uids))
    final = Checkpoint(validity, top)
    batches = await _plan(client, uids, batch_size)
    fetched = 0
    index = 0
    async with contextlib.aclosing(_prefetched(client, folder, batches, prepare)) as got:
        async for chunk, messages, prepared in got:
            index += 1
            fetched += len(messages)
            last = index == len(batches)
            progress: SyncState = (
                final if last else FirstSyncProgress(validity, top, min(chunk), resync)
            )
            if messages:
                await handle(
                    FetchBatch(
                        folder,
                        validity,
                        messages,
                        initial=True,
                        resync=resync,
                        state=progress,
                        done=fetched,
                        total=len(uids),
                        prepared=prepared,
                    )
                )
            else:
                await save_checkpoint(folder, progress)
    if not batches:
        await save_checkpoint(folder, final)
    log.info("IMAP %s: first sync read %d message(s)", folder, fetched)
    return SyncResult(folder, final, fetched, initial=True, resync=resync)


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
    batch_size: int = FETCH_BATCH,
    prepare: Prepare | None = None,
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
                        batch_size=batch_size,
                        prepare=prepare,
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
