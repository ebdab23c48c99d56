"""The IMAP sync as the hub runs it: IDLE, a new UIDVALIDITY, crashes (RELIABILITY 23-25).

``MailIngest`` keeps its folder checkpoints (and a first sync's progress) in the
database, written in the transaction of the batch they cover; these tests crash it at
each point that matters (an error after the first batch of a first sync, a cancellation
inside the transaction, a failure while writing the checkpoint) and check that the next
sync reads only what is missing and leaves exactly one copy of each message. ``watch``
follows the folders with IDLE: a message APPENDed from another connection shows up
within seconds (polling would take a minute).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from channels.email.imap import FetchedMessage
from channels.email.mailsync import Checkpoint, FetchBatch, FirstSyncProgress, SyncState
from channels.email.parse import ParsedEmail
from hub.email_ingest import PARALLEL_FROM, MailIngest
from tests.hub.email.conftest import MailHub, mail, wait_for
from timeline.ingest import IngestResult

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")


def _messages(first: int, count: int) -> list[bytes]:
    return [
        mail(frm=f"c{n % 7}@example.org", subject=f"Message {n}", message_id=f"<m{n}@example.org>")
        for n in range(first, first + count)
    ]


async def _assert_each_once(hub: MailHub, expected: int) -> None:
    stored = await hub.email_events()
    counts = Counter(e["external_id"] for e in stored)
    assert len(stored) == expected, f"{len(stored)} events, expected {expected}"
    assert set(counts.values()) == {1}


async def test_watch_picks_up_new_mail_with_idle(mail_hub: MailHub) -> None:
    mail_hub.dovecot.append(*_messages(0, 2))
    ingest = mail_hub.ingest()
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.watch(mail_hub.imap_config(), stop))
    try:
        # The first sync of both folders is done and the watchers sit in IDLE.
        await wait_for(lambda: ingest.load_checkpoint("INBOX"))
        await wait_for(lambda: ingest.load_checkpoint("Sent"))
        await _assert_each_once(mail_hub, 2)
        await asyncio.sleep(0.3)

        await asyncio.to_thread(
            mail_hub.dovecot.append,
            mail(frm="new@example.org", subject="Fresh", message_id="<fresh@example.org>"),
        )
        customer = await wait_for(lambda: _customer_with_event(mail_hub, "<fresh@example.org>"))
        [event] = await mail_hub.timeline(customer)
        assert event["subject"] == "Fresh"

        # And a copy of something we sent elsewhere, filed in Sent by that program.
        await asyncio.to_thread(
            mail_hub.dovecot.append,
            mail(
                frm="support@commhub.example",
                to="new@example.org",
                subject="Re: Fresh",
                message_id="<sent-elsewhere@commhub.example>",
            ),
            folder="Sent",
        )
        await wait_for(lambda: _customer_with_event(mail_hub, "<sent-elsewhere@commhub.example>"))
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    await _assert_each_once(mail_hub, 4)
    assert (await mail_hub.event("<sent-elsewhere@commhub.example>"))["direction"] == "outbound"


async def _customer_with_event(hub: MailHub, external_id: str) -> str | None:
    for event in await hub.email_events():
        if event["external_id"] == external_id:
            return str(event["customer_id"])
    return None


async def test_a_new_uidvalidity_resyncs_without_duplicates(mail_hub: MailHub) -> None:
    mail_hub.dovecot.append(*_messages(0, 3))
    ingest = mail_hub.ingest()
    await mail_hub.sync(ingest)
    before = await ingest.load_checkpoint("INBOX")
    assert isinstance(before, Checkpoint) and before.last_uid == 3

    new_validity = mail_hub.dovecot.change_uidvalidity("INBOX")
    mail_hub.dovecot.append(*_messages(3, 1))
    again = mail_hub.ingest()
    results = {r.folder: r for r in await mail_hub.sync(again)}
    assert results["INBOX"].resync is True
    assert results["INBOX"].fetched == 4
    assert again.stored == 1
    await _assert_each_once(mail_hub, 4)
    after = await again.load_checkpoint("INBOX")
    assert after == Checkpoint(new_validity, 4)
    # And then it is incremental again.
    results = {r.folder: r for r in await mail_hub.sync()}
    assert (results["INBOX"].fetched, results["INBOX"].resync) == (0, False)


class FailsOnSecondBatch(MailIngest):
    """Crashes (an exception) when the second batch arrives: the first one committed."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batches = 0

    async def handle(self, batch: FetchBatch) -> None:
        self.batches += 1
        if self.batches == 2:
            raise RuntimeError("simulated crash after the first batch")
        await super().handle(batch)


async def test_a_killed_first_sync_resumes_after_its_last_batch(mail_hub: MailHub) -> None:
    mail_hub.dovecot.append(*_messages(0, 60))  # batches of 50 and 10, newest first
    validity = mail_hub.dovecot.uidvalidity()
    crashing = FailsOnSecondBatch(mail_hub.services, batch_size=50)
    with pytest.raises(RuntimeError, match="simulated crash"):
        await mail_hub.sync(crashing)
    assert crashing.stored == 50
    # UIDs 60..11 are stored, with the first sync's progress in the same transaction.
    progress = await crashing.load_checkpoint("INBOX")
    assert progress == FirstSyncProgress(validity, top=60, below=11)

    mail_hub.dovecot.append(*_messages(60, 1))  # arrived while the hub was down
    fresh = mail_hub.ingest(batch_size=50)
    results = {r.folder: r for r in await mail_hub.sync(fresh)}
    assert (results["INBOX"].fetched, fresh.stored) == (10, 10)  # only the rest is read
    assert await fresh.load_checkpoint("INBOX") == Checkpoint(validity, 60)
    results = {r.folder: r for r in await mail_hub.sync()}
    assert (results["INBOX"].fetched, results["INBOX"].initial) == (1, False)
    await _assert_each_once(mail_hub, 61)


class CancelledInsideTheTransaction(MailIngest):
    """Stops dead after the batch's rows are written but before they are committed."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.inside = asyncio.Event()

    async def _ingest(
        self, conn: AsyncConnection, parsed: list[ParsedEmail], *, lift_bounces: bool = True
    ) -> IngestResult:
        result = await super()._ingest(conn, parsed, lift_bounces=lift_bounces)
        self.inside.set()
        await asyncio.sleep(60)  # the process dies here
        return result


async def test_a_crash_between_fetch_and_commit_keeps_one_copy(mail_hub: MailHub) -> None:
    mail_hub.dovecot.append(*_messages(0, 2))
    await mail_hub.sync()
    checkpoint = await mail_hub.ingest().load_checkpoint("INBOX")

    mail_hub.dovecot.append(*_messages(2, 3))
    crashing = CancelledInsideTheTransaction(mail_hub.services)
    task = asyncio.create_task(mail_hub.sync(crashing))
    await asyncio.wait_for(crashing.inside.wait(), timeout=10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # Nothing of the batch was committed and the checkpoint did not move.
    await _assert_each_once(mail_hub, 2)
    assert await mail_hub.ingest().load_checkpoint("INBOX") == checkpoint

    fresh = mail_hub.ingest()
    await mail_hub.sync(fresh)
    assert fresh.stored == 3
    await _assert_each_once(mail_hub, 5)


class CheckpointFails(MailIngest):
    """The batch's rows are written, then storing its checkpoint fails: all rolls back."""

    async def _save_state(self, conn: AsyncConnection, folder: str, state: SyncState) -> None:
        if folder == "INBOX":
            raise RuntimeError("simulated crash at the checkpoint")
        await super()._save_state(conn, folder, state)


async def test_the_checkpoint_commits_with_its_batch(mail_hub: MailHub) -> None:
    mail_hub.dovecot.append(*_messages(0, 2))
    await mail_hub.sync()
    before = await mail_hub.ingest().load_checkpoint("INBOX")
    assert isinstance(before, Checkpoint)
    mail_hub.dovecot.append(*_messages(2, 55))
    crashing = CheckpointFails(mail_hub.services, batch_size=50)
    with pytest.raises(RuntimeError, match="at the checkpoint"):
        await mail_hub.sync(crashing)
    # The batch's messages were rolled back with the checkpoint: nothing half-done.
    await _assert_each_once(mail_hub, 2)
    assert await crashing.load_checkpoint("INBOX") == before

    fresh = mail_hub.ingest(batch_size=50)
    results = {r.folder: r for r in await mail_hub.sync(fresh)}
    assert (results["INBOX"].fetched, fresh.stored) == (55, 55)
    await _assert_each_once(mail_hub, 57)


class PoolWatched(MailIngest):
    """Counts the worker pools it stops."""

    pools_stopped = 0

    async def close(self) -> None:
        self.pools_stopped += self._pool is not None
        await super().close()


async def test_a_big_first_sync_parses_in_worker_processes(mail_hub: MailHub) -> None:
    # 110 messages in batches of 55: each batch is parsed in two worker processes
    # while the one before is stored; order, threads and counts are as without them.
    count = 2 * PARALLEL_FROM + 10
    mail_hub.dovecot.append(*_messages(0, count))
    ingest = PoolWatched(mail_hub.services, parse_processes=2, batch_size=count // 2)
    results = {r.folder: r for r in await mail_hub.sync(ingest)}
    assert ingest.pools_stopped == 1 and ingest._pool is None  # used, then stopped
    assert (results["INBOX"].fetched, ingest.stored) == (count, count)
    await _assert_each_once(mail_hub, count)


async def test_stopping_the_parsing_processes_lets_a_parse_in_flight_finish(
    mail_hub: MailHub,
) -> None:
    # Folders are watched side by side: one folder's first sync ending stops the pool
    # while another folder's batch may be in it.
    ingest = mail_hub.ingest(parse_processes=1)
    fetched = [FetchedMessage(n, raw) for n, raw in enumerate(_messages(0, PARALLEL_FROM), 1)]
    parsing = [asyncio.create_task(ingest.prepare(f, fetched)) for f in ("INBOX", "Other")]
    await asyncio.sleep(0)  # both batches handed to the pool, more than it runs at once
    assert ingest._pool is not None
    await ingest.close()
    for parsed in await asyncio.gather(*parsing):
        assert [p.message_id for p in parsed] == [
            f"<m{n}@example.org>" for n in range(PARALLEL_FROM)
        ]
