"""The demo's email history: threads with an attachment and a bounce, as ingestion makes them."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from hub.demo import seed
from timeline import mailstore, migrate
from timeline.db import Database
from timeline.files import FileStore
from timeline.schema import events


async def test_the_demo_has_email_threads_with_an_attachment_and_a_bounce(
    database_url: str, tmp_path: Path
) -> None:
    db = Database.from_url(database_url)
    try:
        await migrate.upgrade(db)
        await seed(db, FileStore(tmp_path / "files"), customers=14)
        async with db.read() as conn:
            rows = (
                (await conn.execute(sa.select(events).where(events.c.channel == "email")))
                .mappings()
                .all()
            )
            bounced = [r for r in rows if r["kind"] == "message" and r["status"] == "bounced"]
            assert bounced, "the demo has a bounced email"
            address = bounced[0]["recipient"]
            refused = await mailstore.undeliverable(conn, address)
    finally:
        await db.dispose()
    threads: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        threads.setdefault(str(row["thread_key"]), []).append(dict(row))
    assert any(len(t) >= 2 and any(e["attachments"] for e in t) for t in threads.values())
    # The bounce: our message marked with the report, the report itself a system event
    # in the same thread (never a reply from the customer), the address refused.
    message = bounced[0]
    assert message["direction"] == "outbound" and message["data"]["dsn"]["hard"] is True
    [report] = [
        e
        for e in threads[str(message["thread_key"])]
        if e["kind"] == "system" and e["status"] == "bounced"
    ]
    assert report["direction"] == "internal" and report["sender"] is None
    assert report["data"]["dsn"]["original_message_id"] == message["external_id"]  # type: ignore[index]
    assert refused is not None and refused["status"] == "5.1.1"
