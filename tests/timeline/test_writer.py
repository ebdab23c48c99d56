"""The group-commit writer: shared transactions, per-submission outcomes, isolation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import sqlalchemy as sa

from timeline.db import Database
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind
from timeline.publish import Publisher
from timeline.schema import customers, events
from timeline.writer import GroupWriter


def sms(sid: str, sender: str, status: str = "received") -> Event:
    return Event(
        Channel.SMS,
        Kind.MESSAGE,
        Direction.INBOUND,
        datetime.now(UTC),
        external_id=sid,
        status=status,
        text="hi",
        sender=Identity(IdentityKind.PHONE, sender),
        recipient=Identity(IdentityKind.PHONE, "+14155550199"),
    )


async def count(db: Database, table: sa.Table) -> int:
    async with db.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def test_concurrent_submissions_share_transactions(db: Database) -> None:
    publisher = Publisher()
    writer = GroupWriter(db, region="US", publisher=publisher)
    writer.start()
    with publisher.subscribe() as sub:
        results = await asyncio.gather(
            *(writer.submit([sms(f"SM{i}", f"+1415555{1000 + i % 50:04d}")]) for i in range(200))
        )
        await writer.stop()
        assert all(r[0].kind == "created" for r in results)
        assert {r[0].event.external_id for r in results if r[0].event} == {
            f"SM{i}" for i in range(200)
        }
        assert sub.queue.qsize() == 200
    assert await count(db, events) == 200
    assert await count(db, customers) == 50
    # 200 requests at once are written in far fewer transactions than requests.
    assert writer.batches < 200


async def test_duplicates_across_submissions_are_stored_once(db: Database) -> None:
    writer = GroupWriter(db, region="US")
    results = await asyncio.gather(
        *(writer.submit([sms("SMdup", "+14155550100")]) for _ in range(3))
    )
    await writer.stop()
    kinds = sorted(r[0].kind for r in results)
    assert kinds == ["created", "duplicate", "duplicate"]
    assert await count(db, events) == 1


async def test_a_bad_submission_fails_alone(db: Database) -> None:
    writer = GroupWriter(db, region="US")
    # A customer_id that does not exist violates the foreign key: the whole batch fails,
    # the writer retries one by one, and only that submission sees the error.
    bad = Event(
        Channel.NOTE,
        Kind.NOTE,
        Direction.INTERNAL,
        datetime.now(UTC),
        text="orphan",
        customer_id="no-such-customer",
    )
    good = [writer.submit([sms(f"SMok{i}", "+14155550101")]) for i in range(5)]
    results = await asyncio.gather(writer.submit([bad]), *good, return_exceptions=True)
    await writer.stop()
    assert isinstance(results[0], Exception)
    assert all(not isinstance(r, BaseException) and r[0].kind == "created" for r in results[1:])
    assert await count(db, events) == 5


async def test_a_cancelled_submitter_still_has_its_events_written(db: Database) -> None:
    writer = GroupWriter(db, region="US")
    writer.start()
    task = asyncio.create_task(writer.submit([sms("SMgone", "+14155550102")]))
    await asyncio.sleep(0)  # submitted, the writer has not run yet
    task.cancel()
    other = await writer.submit([sms("SMstays", "+14155550103")])
    await writer.stop()
    assert task.cancelled()
    assert other[0].kind == "created"
    assert await count(db, events) == 2


async def _after_passes(writer: GroupWriter, passes: int, sid: str) -> None:
    for _ in range(passes):
        await asyncio.sleep(0)
    await writer.submit([sms(sid, "+14155550104")])


async def test_under_load_submissions_a_few_loop_passes_apart_share_a_batch(
    db: Database,
) -> None:
    writer = GroupWriter(db, region="US", concurrency=1)  # one writer task on PostgreSQL too
    writer.start()
    await asyncio.gather(*(writer.submit([sms(f"SMa{i}", "+14155550104")]) for i in range(4)))
    before = writer.batches  # the last batch held several submissions: under load
    await asyncio.gather(*(_after_passes(writer, i, f"SMb{i}") for i in range(4)))
    assert writer.batches == before + 1
    await writer.stop()
    assert await count(db, events) == 8


async def test_after_a_lone_request_the_next_is_written_at_once(db: Database) -> None:
    writer = GroupWriter(db, region="US", concurrency=1)
    writer.start()
    await writer.submit([sms("SMlone", "+14155550105")])
    before = writer.batches  # a batch of one: no waiting for others
    await asyncio.gather(_after_passes(writer, 0, "SMc0"), _after_passes(writer, 3, "SMc3"))
    assert writer.batches == before + 2
    await writer.stop()
