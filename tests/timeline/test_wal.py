"""Background WAL checkpoints keep SQLite's log short (timeline.wal)."""

from __future__ import annotations

import asyncio
import secrets
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
    await checkpoints.close()
    assert checkpoints.runs == (2 if db.is_sqlite else 0)  # PostgreSQL needs none


async def test_checkpoints_leave_the_writer_its_connection(tmp_path: Path) -> None:
    """Checkpoints run on a connection of their own: a checkpoint that ends after the
    next writer's commit does not put its connection where the pool hands out the next
    one (the one returned last), so writers keep the connection whose cache they warmed."""
    db = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")

    async def write(rows: int) -> object:
        async with db.write() as conn:
            await conn.execute(sa.insert(ROWS), [{"body": secrets.token_bytes(4000)}] * rows)
            return (await conn.get_raw_connection()).driver_connection

    try:
        async with db.write() as conn:
            await conn.exec_driver_sql("CREATE TABLE wal_rows (body BLOB)")
        await db.checkpoints.wait()
        first = await write(8000)  # ~32 MB of log: its checkpoint outlasts the next write
        second = await write(1)
        assert not db.checkpoints._task.done()  # type: ignore[union-attr]
        await db.checkpoints.wait()
        third = await write(1)
        assert first is second is third
    finally:
        await db.dispose()
