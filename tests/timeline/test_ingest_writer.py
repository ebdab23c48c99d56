"""The group writer with several batches in flight (PostgreSQL) and one (SQLite).

Concurrent batches race on new senders, repeated MessageSids and status updates of the
same messages; whatever the interleaving, every key is stored once, every new sender
gets one customer, and statuses only move forward.
"""

from __future__ import annotations

import asyncio
import random

import sqlalchemy as sa

from timeline.db import Database
from timeline.schema import customers, events, identities
from timeline.writer import GroupWriter

from .conftest import REGION, T0, count, minutes, phone, sms_in, sms_out

STATUSES = ["queued", "sent", "delivered"]


async def test_concurrent_batches_store_each_key_once(db: Database) -> None:
    writer = GroupWriter(db, region=REGION, max_batch=10)  # many small batches
    assert writer.concurrency == (1 if db.is_sqlite else 3)
    rng = random.Random(7)
    outbound = [f"SMout{i:03d}" for i in range(20)]
    # Outbound messages first (created queued), then a storm of everything at once.
    await writer.submit([sms_out(phone(50), external_id=sid) for sid in outbound])
    submissions = []
    for i in range(300):
        sender = phone(i % 40)  # 40 senders, 30 of them new to every batch in flight
        sid = f"SMin{i % 150:03d}"  # every inbound MessageSid arrives twice
        submissions.append([sms_in(sender, external_id=sid, at=T0 + minutes(i))])
    for sid in outbound:
        for status in STATUSES[1:]:
            submissions.append(
                [sms_out(phone(50), external_id=sid, status=status, update_only=True)]
            )
    rng.shuffle(submissions)
    writer.start()
    results = await asyncio.gather(*(writer.submit(s) for s in submissions))
    await writer.stop()

    kinds = [r[0].kind for r in results]
    assert kinds.count("created") == 150
    assert "rejected" not in kinds and "unknown" not in kinds
    assert await count(db, events) == 170
    assert await count(db, events, events.c.external_id.like("SMin%")) == 150
    # One customer per sender (40 inbound senders plus the outbound recipient).
    assert await count(db, identities) == 41
    assert await count(db, customers) == 41
    async with db.read() as conn:
        rows = await conn.execute(
            sa.select(events.c.external_id, events.c.status).where(
                events.c.external_id.in_(outbound)
            )
        )
        assert {status for _, status in rows} == {"delivered"}
