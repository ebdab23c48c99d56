"""Background WAL checkpoints keep SQLite's log short (timeline.wal)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa

from timeline.db import Database
from timeline.wal import Checkpointer

ROWS = sa.table("wal_rows", sa.column("body"))


def _log_size(path: Path) -> int:
    return Path(f"{path}-wal").stat().st_size


async def _write_batches(db: Database, checkpoints: Checkpointer | None) -> None:
    async with db.write() as conn:
        await conn.exec_driver_sql("CREATE TABLE wal_rows (body BLOB)")
    for n in range(30):  # 30 x ~100 kB: below SQLite's own checkpoint at 1,000 pages
        async with db.write() as conn:
            await conn.execute(sa.insert(ROWS), [{"body": bytes([n]) * 4000}] * 25)
        if checkpoints is not None:
            checkpoints.request()
            await checkpoints.wait()


async def test_the_log_is_copied_back_after_each_commit_and_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    db = Database.from_url(f"sqlite+aiosqlite:///{path}")
    try:
        checkpoints = db.checkpoints  # the one Database.write() asks after each commit
        await _write_batches(db, checkpoints)
        assert checkpoints.runs == 31  # the 30 batches and the CREATE TABLE
        with_checkpoints = _log_size(path)
    finally:
        await db.dispose()

    other = tmp_path / "other.db"
    db = Database.from_url(f"sqlite+aiosqlite:///{other}")
    try:
        await _write_batches(db, None)
        without = _log_size(other)
    finally:
        await db.dispose()
    # The log holds about one batch instead of all of them.
    assert without > 2_500_000
    assert with_checkpoints < 400_000


async def test_requests_while_one_runs_make_one_more(db: Database) -> None:
    checkpoints = Checkpointer(db)
    checkpoints.request()
    checkpoints.request()  # before it started: the same run
    await asyncio.sleep(0)
    for _ in range(3):  # while it runs: one more after it
        checkpoints.request()
    await checkpoints.wait()
    assert checkpoints.runs == (2 if db.is_sqlite else 0)  # PostgreSQL needs none
