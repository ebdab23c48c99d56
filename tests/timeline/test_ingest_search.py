"""The full-text index on the write path: every writer indexes what it inserts, once.

On SQLite the writers fill ``events_fts`` per batch (migration 0006 dropped the per-row
insert trigger); on PostgreSQL the ``tsvector`` column is generated. Either way a word of
an ingested or uploaded event is found, a repeated ingest does not index twice, edits and
erasure still reach the index, and SQLite's FTS5 ``integrity-check`` stays clean.
"""

from __future__ import annotations

import sqlalchemy as sa

from timeline import documents as document_ops
from timeline import privacy
from timeline.db import Database
from timeline.ingest import ingest
from timeline.schema import events
from timeline.search import event_matches

from .conftest import REGION, T0, email_in, minutes, phone, sms_in


async def _matching(db: Database, word: str) -> set[str]:
    async with db.read() as conn:
        rows = await conn.execute(sa.select(events.c.id).where(event_matches(db.dialect, word)))
        return set(rows.scalars())


async def _fts_rows(db: Database, word: str) -> int:
    async with db.read() as conn:
        return len(
            (
                await conn.execute(
                    sa.text("SELECT rowid FROM events_fts WHERE events_fts MATCH :q"),
                    {"q": f'"{word}"'},
                )
            ).all()
        )


async def _integrity(db: Database) -> None:
    if db.is_sqlite:
        async with db.write() as conn:
            # Raises (SQLITE_CORRUPT_VTAB) if the index disagrees with the events table.
            await conn.exec_driver_sql(
                "INSERT INTO events_fts(events_fts, rank) VALUES ('integrity-check', 1)"
            )


async def test_ingested_batches_are_indexed_once(db: Database) -> None:
    if db.is_sqlite:
        async with db.read() as conn:
            triggers = (
                await conn.exec_driver_sql(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
                )
            ).scalars()
            assert list(triggers) == ["events_fts_ad", "events_fts_au"]
    batch = [
        sms_in(phone(i % 7), at=T0 + minutes(i), text=f"walrus number{i}") for i in range(40)
    ] + [email_in("ada@example.com", subject="Harpsichord", text="tuning", at=T0)]
    first = await ingest(db, batch, region=REGION)
    assert first.count("created") == 41
    created = {o.event.id for o in first.outcomes if o.event is not None}
    assert await _matching(db, "walrus") == created - {first.outcomes[-1].event.id}  # type: ignore[union-attr]
    assert await _matching(db, "number17") == {first.outcomes[17].event.id}  # type: ignore[union-attr]
    assert await _matching(db, "harpsichord tuning") == {first.outcomes[-1].event.id}  # type: ignore[union-attr]

    # The same batch again stores nothing and indexes nothing twice.
    again = await ingest(db, batch, region=REGION)
    assert again.count("duplicate") == 41
    if db.is_sqlite:
        assert await _fts_rows(db, "walrus") == 40
    # A second batch lands beside the first.
    more = await ingest(db, [sms_in(phone(1), at=T0, text="walrus again")], region=REGION)
    assert len(await _matching(db, "walrus")) == 41
    assert await _matching(db, "again") == {more.outcomes[0].event.id}  # type: ignore[union-attr]
    await _integrity(db)


async def test_uploads_are_indexed_and_erasure_unindexes(db: Database) -> None:
    result = await ingest(db, [sms_in(phone(3), text="zeppelin ride")], region=REGION)
    stored = result.outcomes[0].event
    assert stored is not None
    async with db.write() as conn:
        _, upload = await document_ops.add_upload(
            conn,
            stored.customer_id,
            filename="zeppelin ticket.pdf",
            content_type="application/pdf",
            sha256="0" * 64,
            size=1,
            author=None,
        )
    await ingest(db, [sms_in(phone(4), text="zeppelin too")], region=REGION)
    assert {stored.id, upload.id} <= await _matching(db, "zeppelin")
    assert len(await _matching(db, "zeppelin")) == 3
    await _integrity(db)

    async with db.write() as conn:
        await privacy.erase(conn, stored.customer_id)
    assert len(await _matching(db, "zeppelin")) == 1
    assert await _matching(db, "ride") == set()
    if db.is_sqlite:
        assert await _fts_rows(db, "ride") == 0
    await _integrity(db)
