"""SQLite's WAL checkpoints, run beside the requests instead of inside one of their commits.

In WAL mode SQLite copies the log back into the database file (a checkpoint) when a
commit leaves more than 1,000 pages in the log (https://www.sqlite.org/wal.html#ckpt,
``wal_autocheckpoint``): that commit returns only after the copy and its fsync, 10-35 ms
on this project's machine, and every request waiting for that commit waits too (twenty
screen pops at once, one burst in ten). A :class:`Checkpointer`, asked after a commit,
runs a PASSIVE checkpoint in a task on a pooled connection of its own, one at a time
(asked again while one runs: once more after it), so the log is copied while it is short
and the next writer starts it over; no commit reaches the limit. A PASSIVE checkpoint
waits for no reader or writer, and SQLite's own automatic checkpoint stays as the
fallback. PostgreSQL needs none of this.

The checkpoints keep one pooled connection checked out for themselves: taken from the
pool for each run, it went back on top of it (the pool hands out the connection returned
last), and after a checkpoint that outlasted a write the next writer took it instead of
the one whose page cache the previous batches warmed: two connections could come to hold
a writer's cache (``tests/timeline/test_wal.py``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.pool import PoolProxiedConnection

from timeline.db import Database

log = logging.getLogger(__name__)


class Checkpointer:
    """Background WAL checkpoints of one SQLite database (a no-op on PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._conn: PoolProxiedConnection | None = None
        self.runs = 0

    def request(self) -> None:
        """After a commit: checkpoint soon, off the caller's path."""
        if not self.db.is_sqlite:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="wal-checkpoint")

    async def wait(self) -> None:
        """Until no checkpoint is running."""
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])

    async def close(self) -> None:
        """After the running checkpoint, give the connection back to the pool."""
        await self.wait()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                if self._conn is None:
                    self._conn = await self.db.engine.raw_connection()
                driver: Any = self._conn.driver_connection
                await driver.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception:  # the next request tries again; SQLite's own stays meanwhile
                log.debug("WAL checkpoint failed", exc_info=True)
                if self._conn is not None:
                    self._conn.invalidate()
                    self._conn = None
                return
            self.runs += 1
            if not self._again:
                return
