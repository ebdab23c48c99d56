"""The storage ceiling of the timeline bench writes exactly the rows the ingest wrote.

``bench.ingest_ceiling`` is what tells whether an ingest rate target can be met at all
(docs/performance.md), so its replay must be faithful: after it, the copy of the
database holds the same rows in every table the ingest wrote, with the same rowids, and
the same full-text index.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from bench import ingest_ceiling
from bench import timeline_bench as tb
from bench.data import Generator
from timeline import migrate
from timeline.db import Database
from timeline.ingest import ingest


def _contents(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    raw = sqlite3.connect(path)
    try:
        found = {
            table: raw.execute(f"SELECT rowid, * FROM {table} ORDER BY rowid").fetchall()
            for table in ingest_ceiling.TABLES
        }
        found["search"] = raw.execute(
            "SELECT rowid FROM events_fts WHERE events_fts MATCH 'the OR a OR hello' ORDER BY rowid"
        ).fetchall()
        found["integrity"] = raw.execute("PRAGMA integrity_check").fetchall()
        return found
    finally:
        raw.close()


async def test_the_replay_writes_the_rows_the_ingest_wrote(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    url = f"sqlite+aiosqlite:///{path}"
    db = Database.from_url(url)
    await migrate.upgrade(db)
    await db.dispose()
    gen = Generator(seed=3)
    built = await tb.build(url, gen, 2_000, 200)
    db = Database.from_url(url)
    try:
        before = await ingest_ceiling.snapshot(db, path, tmp_path / "copy.db")
        assert _contents(before.path) == _contents(path)
        for batch in gen.ingest_batches(built, 5, 40):
            result = await ingest(db, batch, region="US")
            assert result.count("created") == 40
    finally:
        await db.dispose()

    batches = ingest_ceiling.created_batches(path, before)
    assert [b.events for b in batches] == [40] * 5
    assert sum(len(b.rows["customers"]) for b in batches) > 0  # new senders became customers
    ingest_ceiling.replay(before, batches, warm_up=2)
    ingest_ceiling.check_replay(path, before)
    replayed = _contents(before.path)
    assert replayed == _contents(path)
    # The search finds replayed events (the words compared are in the bench's texts).
    assert [r for (r,) in replayed["search"] if r > before.ends["events max(rowid)"]]
