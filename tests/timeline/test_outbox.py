"""The outbox: written with its event, claimed once, settled by outcome (RELIABILITY 29, 31, 32)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from timeline import outbox
from timeline.db import Database
from timeline.events import utcnow
from timeline.ingest import ingest, ingest_batch
from timeline.schema import customers, events
from timeline.schema import outbox as outbox_table

from .conftest import REGION, count, phone, rows, sms_out


async def _event(db: Database) -> str:
    [outcome] = (await ingest(db, [sms_out(phone(1), status=None)], region=REGION)).outcomes
    assert outcome.event
    return outcome.event.id


async def _state(db: Database, row_id: str) -> dict[str, object]:
    [row] = await rows(db, outbox_table, outbox_table.c.id == row_id)
    return row


class Abort(Exception):
    pass


async def test_event_and_outbox_row_commit_together_or_not_at_all(db: Database) -> None:
    # Rolled back: neither the event (nor its new customer) nor the outbox row stays.
    with pytest.raises(Abort):
        async with db.write() as conn:
            result = await ingest_batch(conn, [sms_out(phone(1), status="queued")], region=REGION)
            event = result.outcomes[0].event
            assert event is not None
            await outbox.enqueue(
                conn, event_id=event.id, channel="sms", payload={"body": "hi"}, idempotency_key="k1"
            )
            raise Abort
    assert await count(db, events) == 0
    assert await count(db, outbox_table) == 0
    assert await count(db, customers) == 0

    # Committed: both.
    async with db.write() as conn:
        result = await ingest_batch(conn, [sms_out(phone(1), status="queued")], region=REGION)
        event = result.outcomes[0].event
        assert event is not None
        row_id = await outbox.enqueue(
            conn, event_id=event.id, channel="sms", payload={"body": "hi"}, idempotency_key="k1"
        )
    assert await count(db, events) == 1
    row = await _state(db, row_id)
    assert row["event_id"] == event.id
    assert row["state"] == outbox.PENDING
    assert row["payload"] == {"body": "hi"}
    assert row["attempts"] == 0

    # The enqueue fails (key already used): the event written before it is gone too.
    with pytest.raises(IntegrityError):
        async with db.write() as conn:
            result = await ingest_batch(conn, [sms_out(phone(2), status="queued")], region=REGION)
            event = result.outcomes[0].event
            assert event is not None
            await outbox.enqueue(
                conn, event_id=event.id, channel="sms", payload={}, idempotency_key="k1"
            )
    assert await count(db, events) == 1
    assert await count(db, outbox_table) == 1
    assert await count(db, customers) == 1


async def test_claim_takes_due_rows_oldest_first(db: Database) -> None:
    event_id = await _event(db)
    now = utcnow()
    async with db.write() as conn:
        late = await outbox.enqueue(
            conn,
            event_id=event_id,
            channel="sms",
            payload={"n": 0},
            not_before=now + timedelta(hours=1),
        )
        due = [
            await outbox.enqueue(
                conn,
                event_id=event_id,
                channel="sms",
                payload={"n": i},
                not_before=now - timedelta(minutes=10 - i),
            )
            for i in range(1, 4)
        ]
        email = await outbox.enqueue(conn, event_id=event_id, channel="email", payload={})
    claimed = await outbox.claim(db, "sms", "w1", limit=2)
    assert [c.id for c in claimed] == due[:2]
    assert [c.payload for c in claimed] == [{"n": 1}, {"n": 2}]
    assert all(c.attempts == 1 and c.event_id == event_id for c in claimed)
    assert claimed[0].idempotency_key == due[0]  # the default key is the row id
    rest = await outbox.claim(db, "sms", "w2")
    assert [c.id for c in rest] == due[2:]
    assert await outbox.claim(db, "sms", "w3") == []  # the late row is not due yet
    row = await _state(db, due[0])
    assert row["state"] == outbox.CLAIMED and row["claimed_by"] == "w1"
    assert row["claimed_at"] is not None
    assert (await _state(db, late))["state"] == outbox.PENDING
    assert [c.id for c in await outbox.claim(db, "email", "w4")] == [email]
    assert await outbox.counts(db) == {outbox.CLAIMED: 4, outbox.PENDING: 1}


async def test_retry_later_respects_not_before(db: Database) -> None:
    event_id = await _event(db)
    async with db.write() as conn:
        row_id = await outbox.enqueue(conn, event_id=event_id, channel="sms", payload={})
    [item] = await outbox.claim(db, "sms", "w1")
    delay = timedelta(minutes=5)
    started = utcnow()
    async with db.write() as conn:
        assert await outbox.retry_later(conn, row_id, "429 Too Many Requests", delay)
    finished = utcnow()
    row = await _state(db, row_id)
    assert row["state"] == outbox.PENDING
    assert row["last_error"] == "429 Too Many Requests"
    assert row["claimed_by"] is None and row["claimed_at"] is None
    assert started + delay <= row["not_before"] <= finished + delay
    assert await outbox.claim(db, "sms", "w1") == []  # not before its time
    # Once the time has come (here: moved into the past), it is claimed again.
    await _backdate(db, row_id, not_before=utcnow() - timedelta(seconds=1))
    [again] = await outbox.claim(db, "sms", "w2")
    assert again.id == item.id
    assert again.attempts == 2


async def _backdate(db: Database, row_id: str, **values: object) -> None:
    """Move a row's timestamps into the past (time passing, without sleeping)."""
    async with db.write() as conn:
        await conn.execute(
            outbox_table.update().where(outbox_table.c.id == row_id).values(**values)
        )


async def test_recover_stale_claims_become_unknown_never_pending(db: Database) -> None:
    event_id = await _event(db)
    async with db.write() as conn:
        stale = await outbox.enqueue(conn, event_id=event_id, channel="sms", payload={})
    await outbox.claim(db, "sms", "dead-worker")
    async with db.write() as conn:
        fresh = await outbox.enqueue(conn, event_id=event_id, channel="sms", payload={})
    await outbox.claim(db, "sms", "live-worker")
    assert await outbox.recover_stale(db, timedelta(minutes=10)) == 0
    # The dead worker's claim is two hours old.
    await _backdate(db, stale, claimed_at=utcnow() - timedelta(hours=2))
    assert await outbox.recover_stale(db, timedelta(minutes=10)) == 1
    assert (await _state(db, stale))["state"] == outbox.UNKNOWN
    assert (await _state(db, fresh))["state"] == outbox.CLAIMED
    # Never sent again blindly: not claimable, listed for reconciliation.
    assert await outbox.claim(db, "sms", "another") == []
    unknown = await outbox.unknown_rows(db, "sms")
    assert [u.id for u in unknown] == [stale]
    assert await outbox.unknown_rows(db, "email") == []
    # Reconciliation settles it.
    async with db.write() as conn:
        assert await outbox.mark_sent(conn, stale, "SM123")
    row = await _state(db, stale)
    assert row["state"] == outbox.SENT and row["provider_id"] == "SM123"
    assert row["last_error"] is None


async def test_mark_transitions(db: Database) -> None:
    event_id = await _event(db)
    async with db.write() as conn:
        ids = [
            await outbox.enqueue(conn, event_id=event_id, channel="sms", payload={"n": i})
            for i in range(6)
        ]
    a, b, c, d, e, pending = ids
    # Nothing moves a row that is not claimed (or unknown).
    async with db.write() as conn:
        assert not await outbox.mark_sent(conn, pending, "SMx")
        assert not await outbox.mark_failed(conn, pending, "x")
        assert not await outbox.mark_unknown(conn, pending, "x")
        assert not await outbox.retry_later(conn, pending, "x", timedelta(0))
        assert not await outbox.mark_sent(conn, "no-such-row", "SMx")
    await outbox.claim(db, "sms", "w", limit=5)
    async with db.write() as conn:
        assert await outbox.mark_sent(conn, a, "SMa")
        assert await outbox.mark_failed(conn, b, "21610 opted out")
        assert await outbox.mark_skipped(conn, c, "opted out")
        assert await outbox.mark_unknown(conn, d, "timeout after send")
        assert await outbox.mark_sent(conn, e, "SMe")
        # Final states stay final.
        assert not await outbox.mark_sent(conn, a, "SMother")
        assert not await outbox.mark_failed(conn, a, "late")
        assert not await outbox.retry_later(conn, b, "x", timedelta(0))
        assert not await outbox.mark_unknown(conn, c, "x")
        assert not await outbox.mark_sent(conn, e, "again")
    states = {i: await _state(db, i) for i in ids}
    assert [states[i]["state"] for i in ids] == [
        outbox.SENT,
        outbox.FAILED,
        outbox.SKIPPED,
        outbox.UNKNOWN,
        outbox.SENT,
        outbox.PENDING,
    ]
    assert states[a]["provider_id"] == "SMa"
    assert states[b]["last_error"] == "21610 opted out"
    assert states[c]["last_error"] == "opted out"
    assert states[d]["last_error"] == "timeout after send"
    # Reconciliation: unknown -> pending (it never reached the provider), or failed.
    async with db.write() as conn:
        assert await outbox.retry_later(conn, d, "not found at provider", timedelta(0))
    assert (await _state(db, d))["state"] == outbox.PENDING
    assert await outbox.counts(db) == {
        outbox.SENT: 2,
        outbox.FAILED: 1,
        outbox.SKIPPED: 1,
        outbox.PENDING: 2,
    }


async def test_each_row_is_claimed_by_exactly_one_of_many_workers(
    db: Database, make_db: Callable[[], Database]
) -> None:
    event_id = await _event(db)
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(
            outbox_table.insert(),
            [
                {
                    "id": f"row{i:05d}",
                    "event_id": event_id,
                    "channel": "sms",
                    "idempotency_key": f"key{i}",
                    "payload": {"n": i},
                    "state": outbox.PENDING,
                    "attempts": 0,
                    "not_before": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(500)
            ],
        )
    workers = [make_db() for _ in range(5)] + [db]

    async def work(pool: Database, name: str) -> list[str]:
        got: list[str] = []
        while True:
            batch = await outbox.claim(pool, "sms", name, limit=17)
            if not batch:
                return got
            got.extend(item.id for item in batch)
            await asyncio.sleep(0)

    results = await asyncio.gather(*(work(p, f"w{i}") for i, p in enumerate(workers * 2)))
    claimed = [row_id for got in results for row_id in got]
    assert len(claimed) == 500
    assert Counter(claimed).most_common(1)[0][1] == 1
    assert set(claimed) == {f"row{i:05d}" for i in range(500)}
    assert sum(1 for got in results if got) > 1  # the work was shared
    async with db.read() as conn:
        attempts = (
            await conn.execute(
                sa.select(outbox_table.c.attempts, sa.func.count()).group_by(
                    outbox_table.c.attempts
                )
            )
        ).all()
        owners = dict(
            (await conn.execute(sa.select(outbox_table.c.id, outbox_table.c.claimed_by))).all()
        )
    assert dict(attempts) == {1: 500}
    for i, got in enumerate(results):
        assert {owners[row_id] for row_id in got} <= {f"w{i}"}
