"""Group commit: concurrent webhook requests share one write transaction.

DESIGN.md (Storage): a webhook is answered only after its event is durably committed, and
one transaction per request costs about a millisecond of driver overhead. The writer
takes whatever submissions are waiting, ingests them in one transaction
(``timeline.ingest.ingest_batch``), then wakes each submitter with its own outcomes.
There is no artificial delay: while one batch commits, the next one gathers, so batches
grow with load and a lone request is written at once.

Under load the writer lets the event loop run a few passes (``GATHER_PASSES``, no timer)
before it takes a batch, when the last batch held more than one submission: requests
this process is already handling (their bodies read, their signatures being checked)
then join this transaction instead of the next. Without it, concurrent webhooks split
into a large and a small batch that alternate (32 connections: batches of 27 and 5),
and every transaction costs the same fixed work (BEGIN, about eight trips to SQLite's
thread, COMMIT: ~600 us of event-loop CPU in process). Measured with the SMS bench's
servers under wrk -c32, A/B: batches of 31 instead of 16 on average, hub CPU per
webhook 334 -> 275 us, 2,865 -> 3,402 webhooks/s. A lone request (last batch of one) is
taken at once.

A batch that fails as a whole is retried one submission at a time, so one bad request
cannot fail the others that shared its transaction.

On PostgreSQL several batches are written at once (``concurrency``, 3 by default): each
batch spends most of its time waiting for round trips, and the server runs concurrent
transactions in parallel. Concurrent batches are safe: every insert is ``ON CONFLICT DO
NOTHING`` with the winner read back, and rows are locked in key order (``ingest_batch``);
a deadlock would still only fail that batch over to the one-by-one retry. SQLite has one
writer at a time (``BEGIN IMMEDIATE``), so there it is one batch at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from timeline.db import Database
from timeline.events import Event
from timeline.files import FileStore
from timeline.ingest import Outcome, ingest_batch
from timeline.publish import Publisher

log = logging.getLogger(__name__)

_Submission = tuple[Sequence[Event], "asyncio.Future[list[Outcome]]"]
_STOP = None
#: Event-loop passes the writer yields before taking a batch, after a batch of several.
GATHER_PASSES = 6


class GroupWriter:
    """Ingests submitted events in shared transactions; ``submit`` returns once committed."""

    def __init__(
        self,
        db: Database,
        *,
        region: str,
        files: FileStore | None = None,
        publisher: Publisher | None = None,
        max_batch: int = 1000,
        concurrency: int | None = None,
    ) -> None:
        self.db = db
        self.region = region
        self.files = files
        self.publisher = publisher
        self.max_batch = max_batch
        self.concurrency = 1 if db.is_sqlite else (concurrency or 3)
        self._queue: asyncio.Queue[_Submission | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0

    def start(self) -> None:
        """Start the writer tasks (idempotent)."""
        if not self._tasks or all(t.done() for t in self._tasks):
            self._tasks = [
                asyncio.create_task(self._run(), name=f"group-writer-{n}")
                for n in range(self.concurrency)
            ]

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        if not self._tasks:
            return
        for _ in self._tasks:
            await self._queue.put(_STOP)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def submit(self, events: Sequence[Event]) -> list[Outcome]:
        """Ingest ``events``; returns their outcomes once they are committed.

        Once submitted, the events are written even if the caller is cancelled while
        it waits (a webhook whose client went away was still received).
        """
        if not self._tasks:
            self.start()
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((events, future))
        # Awaited directly, not through asyncio.shield: a cancelled caller cancels this
        # future, and the writer still writes its events (it does not look at
        # cancellation). Shield costs an extra future and loop callback per request.
        return await future

    async def _run(self) -> None:
        stopping = False
        last = 1  # submissions in the last batch: more than one means concurrent callers
        while not stopping:
            first = await self._queue.get()
            if first is None:  # _STOP
                return
            if last > 1:
                # Let handlers in progress on this loop submit first (module doc). A fixed
                # number of passes: stopping once as many wait as last time would keep
                # the batches at whatever size they first settled on.
                for _ in range(GATHER_PASSES):
                    await asyncio.sleep(0)
            live: list[_Submission] = [first]
            size = len(first[0])
            while size < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:  # _STOP
                    stopping = True
                    break
                live.append(item)
                size += len(item[0])
            last = len(live)
            try:
                await self._write(live)
            except Exception:
                log.exception(
                    "group commit of %d submissions failed; writing one by one", len(live)
                )
                for submission in live:
                    try:
                        await self._write([submission])
                    except Exception as exc:  # this submission alone is bad
                        if not submission[1].done():
                            submission[1].set_exception(exc)

    async def _write(self, submissions: list[_Submission]) -> None:
        flat = [event for events, _ in submissions for event in events]
        async with self.db.write() as conn:
            result = await ingest_batch(conn, flat, region=self.region, files=self.files)
        self.batches += 1
        if self.publisher is not None:
            for stored in result.changed:
                self.publisher.publish("timeline", stored)
        start = 0
        for events, future in submissions:
            part = result.outcomes[start : start + len(events)]
            start += len(events)
            if not future.done():
                future.set_result(part)
