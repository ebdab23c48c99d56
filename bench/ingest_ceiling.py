"""The storage ceiling of the batch ingest on SQLite: the same rows, written by the driver alone.

``timeline.ingest`` resolves senders, looks up what it already holds, builds rows and
writes them. What would remain if all of that cost nothing is the writing itself: the
rows one ingest run created (events, new customers, their identities), grouped by the
batch that made them, inserted again into a copy of the database as it was before that
run, with the stdlib ``sqlite3`` driver (``executemany``), one transaction per batch,
the batch's full-text statement as the hub sends it (``timeline.search``), the hub's
connection settings (read off one of its connections) and a PASSIVE WAL checkpoint
beside the writer after every commit, as ``timeline.wal.Checkpointer`` runs them. No
lookups, no Python per row beyond the driver's: no ingest can be faster than this on
the same machine, database and rows, so a rate target above it cannot be met by the
ingest's code (https://sqlite.org/wal.html, https://sqlite.org/fts5.html).
"""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from timeline.db import Database
from timeline.search import _INDEX_FROM_SQL as INDEX_FROM_SQL

#: The connection settings the ceiling copies from a hub connection.
PRAGMAS = ("synchronous", "foreign_keys", "wal_autocheckpoint", "journal_size_limit", "cache_size")
TABLES = ("customers", "identities", "events")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A copy of the database before an ingest run, and where each table ended then."""

    path: Path
    #: ``table_ends`` of the copy.
    ends: dict[str, int]
    pragmas: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Batch:
    """The rows one ingest batch created, per table, in rowid order."""

    rows: dict[str, list[tuple[Any, ...]]]
    #: Where ``id`` is in an events row (the full-text statement starts from the first).
    id_at: int

    @property
    def events(self) -> int:
        """How many events the batch created."""
        return len(self.rows["events"])


@dataclasses.dataclass(frozen=True)
class CeilingFigures:
    """The timed part of a replay: events written, wall seconds, this process's CPU seconds."""

    events: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds


async def snapshot(db: Database, sqlite_path: Path, copy: Path) -> Snapshot:
    """Fold the log into the file, read the hub's settings, copy the file (engine disposed)."""
    await db.checkpoints.wait()
    async with db.write() as conn:
        pragmas = {
            name: int((await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one())
            for name in PRAGMAS
        }
    async with db.read() as conn:
        await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    await db.dispose()
    shutil.copyfile(sqlite_path, copy)
    return Snapshot(copy, table_ends(copy), pragmas)


def table_ends(path: Path) -> dict[str, int]:
    """Each table's rows and largest rowid: equal after a faithful replay."""
    raw = sqlite3.connect(path)
    try:
        return {
            f"{t} {what}": raw.execute(f"SELECT coalesce({what}, 0) FROM {t}").fetchone()[0]
            for t in TABLES
            for what in ("max(rowid)", "count(*)")
        }
    finally:
        raw.close()


def created_batches(sqlite_path: Path, before: Snapshot) -> list[Batch]:
    """The rows created since ``before``, grouped by the ingest batch that created them.

    A batch's events share one ``created_at`` (``timeline.ingest`` stamps a batch once);
    a new customer, and any new identity, belongs to the batch of its customer's first
    event in the run.
    """
    raw = sqlite3.connect(sqlite_path)
    try:
        rows = {
            t: raw.execute(
                f"SELECT * FROM {t} WHERE rowid > ? ORDER BY rowid",
                (before.ends[f"{t} max(rowid)"],),
            ).fetchall()
            for t in TABLES
        }
        columns = {t: [d[1] for d in raw.execute(f"PRAGMA table_info({t})")] for t in TABLES}
    finally:
        raw.close()
    names = columns["events"]
    created_at, customer_id = names.index("created_at"), names.index("customer_id")
    by_stamp: dict[Any, int] = {}
    first_batch: dict[str, int] = {}
    batches: list[Batch] = []
    for row in rows["events"]:
        k = by_stamp.setdefault(row[created_at], len(by_stamp))
        if k == len(batches):
            batches.append(Batch({t: [] for t in TABLES}, names.index("id")))
        batches[k].rows["events"].append(row)
        first_batch.setdefault(row[customer_id], k)
    own_id = columns["customers"].index("id")
    for row in rows["customers"]:
        batches[first_batch[row[own_id]]].rows["customers"].append(row)
    owner = columns["identities"].index("customer_id")
    for row in rows["identities"]:
        batches[first_batch.get(row[owner], 0)].rows["identities"].append(row)
    return batches


class _Checkpoints:
    """PASSIVE checkpoints on a connection of their own, one at a time, asked after commits.

    Asked while one runs: once more after it (``timeline.wal.Checkpointer``'s rule).
    """

    def __init__(self, path: Path, pragmas: dict[str, int]) -> None:
        self._conn = _connect(path, pragmas)
        self._cond = threading.Condition()
        self._wanted = False
        self._running = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="ceiling-checkpoint")
        self._thread.start()

    def request(self) -> None:
        with self._cond:
            self._wanted = True
            self._cond.notify_all()

    def wait(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._wanted and not self._running)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted or self._stop)
                if self._stop:
                    return
                self._wanted = False
                self._running = True
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()


def _connect(path: Path, pragmas: dict[str, int]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for name, value in pragmas.items():
        conn.execute(f"PRAGMA {name}={value}")
    return conn


def _write(conn: sqlite3.Connection, batch: Batch) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for table in TABLES:
        part = batch.rows[table]
        if part:
            marks = ", ".join("?" * len(part[0]))
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", part)
    conn.execute(INDEX_FROM_SQL, (batch.rows["events"][0][batch.id_at],))
    conn.execute("COMMIT")


def replay(before: Snapshot, batches: Sequence[Batch], warm_up: int) -> CeilingFigures:
    """Write the batches into the copy; the first ``warm_up`` of them are not timed."""
    conn = _connect(before.path, before.pragmas)
    checkpoints = _Checkpoints(before.path, before.pragmas)
    try:
        for batch in batches[:warm_up]:
            _write(conn, batch)
            checkpoints.request()
        checkpoints.wait()
        cpu = time.process_time()
        t = time.perf_counter()
        for batch in batches[warm_up:]:
            _write(conn, batch)
            checkpoints.request()
        checkpoints.wait()
        seconds = time.perf_counter() - t
        cpu = time.process_time() - cpu
    finally:
        checkpoints.close()
        conn.close()
    return CeilingFigures(sum(b.events for b in batches[warm_up:]), seconds, cpu)


def check_replay(source: Path, before: Snapshot) -> None:
    """Raise unless the copy now ends where the hub's database does (same rows written)."""
    theirs, ours = table_ends(source), table_ends(before.path)
    if theirs != ours:
        raise RuntimeError(f"the replay differs from the ingest: {ours} != {theirs}")
