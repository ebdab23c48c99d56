"""Races on first contact and on one provider id, each ingest in its own transaction.

On PostgreSQL these exercise the unique constraints (``identities (kind, value)``,
``events (channel, external_id)``); separate Database objects are separate pools, as
several hub processes would have. On SQLite writers are serialized (BEGIN IMMEDIATE),
also across Database objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from timeline import customers as customer_ops
from timeline.db import Database
from timeline.ingest import ingest
from timeline.schema import customers, events, identities

from .conftest import REGION, T0, count, minutes, sms_in, sms_out


async def _assert_one_customer_with_all_events(db: Database, n: int) -> None:
    assert await count(db, customers) == 1
    assert await count(db, identities) == 1
    assert await count(db, events) == n
    async with db.read() as conn:
        owners = set((await conn.execute(sa.select(events.c.customer_id))).scalars())
        [customer_id] = (await conn.execute(sa.select(customers.c.id))).scalars().all()
        customer = await customer_ops.get(conn, customer_id)
    assert owners == {customer_id}
    assert customer.phones == ["+14155550142"]


async def test_twenty_concurrent_first_contacts_make_one_customer(db: Database) -> None:
    spellings = ["(415) 555-0142", "415.555.0142", "+1 415 555 0142", "tel:+14155550142"]
    calls = [
        ingest(db, [sms_in(spellings[i % 4], at=T0 + minutes(i))], region=REGION) for i in range(20)
    ]
    results = await asyncio.gather(*calls)
    assert [r.outcomes[0].kind for r in results] == ["created"] * 20
    customer_ids = {r.outcomes[0].event.customer_id for r in results if r.outcomes[0].event}
    assert len(customer_ids) == 1
    await _assert_one_customer_with_all_events(db, 20)


async def test_concurrent_first_contacts_from_separate_pools(
    db: Database, make_db: Callable[[], Database]
) -> None:
    pools = [make_db() for _ in range(5)]
    calls = [
        ingest(pools[i % 5], [sms_in("+1 415 555 0142", at=T0 + minutes(i))], region=REGION)
        for i in range(20)
    ]
    results = await asyncio.gather(*calls)
    assert [r.outcomes[0].kind for r in results] == ["created"] * 20
    await _assert_one_customer_with_all_events(db, 20)


async def test_one_provider_id_and_its_callbacks_posted_at_once(
    db: Database, make_db: Callable[[], Database]
) -> None:
    # RELIABILITY 3: the same MessageSid posted 3 times at once -> one timeline event.
    pools = [make_db() for _ in range(3)]
    event = sms_in("+14155550142", external_id="SM-raced")
    results = await asyncio.gather(*(ingest(p, [event], region=REGION) for p in pools * 3))
    kinds = sorted(r.outcomes[0].kind for r in results)
    assert kinds == ["created"] + ["duplicate"] * 8
    await _assert_one_customer_with_all_events(db, 1)

    # Concurrent status callbacks for one message end at the highest rank.
    await ingest(db, [sms_out("+14155550142", external_id="SM-cb", status="queued")], region=REGION)
    pools = [make_db() for _ in range(4)]
    statuses = ["sent", "delivered", "sending", "sent", "queued", "delivered", "sending", "sent"]
    await asyncio.gather(
        *(
            ingest(
                pools[i % 4],
                [sms_out("+14155550142", external_id="SM-cb", status=s, update_only=True)],
                region=REGION,
            )
            for i, s in enumerate(statuses)
        )
    )
    async with db.read() as conn:
        status = (
            await conn.execute(sa.select(events.c.status).where(events.c.external_id == "SM-cb"))
        ).scalar_one()
    assert status == "delivered"


# Only PostgreSQL: SQLite serializes writers, so no lock-order deadlock is possible there.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_batches_with_new_identities_in_opposite_order_do_not_deadlock(
    request: pytest.FixtureRequest, db: Database, make_db: Callable[[], Database]
) -> None:
    """Two group-commit batches that both hold new numbers X and Y, in opposite order.

    Two hub processes hit this interleaving now and then; the test makes it happen every
    time. A trigger of the test (not of the hub) holds batch A right after it inserted
    X's identity row, until the test lets it go: A holds X; batch B inserts Y, then waits
    for A on X; A is released and wants Y, held by B.
    """
    x, y = "+14155550150", "+14155550151"
    gate = 720_150
    async with db.write() as conn:
        await conn.execute(
            sa.text(
                "CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"PERFORM pg_advisory_lock({gate}); PERFORM pg_advisory_unlock({gate}); "
                "RETURN NEW; END $$"
            )
        )
        await conn.execute(
            sa.text(
                "CREATE TRIGGER test_gate_x AFTER INSERT ON identities FOR EACH ROW "
                f"WHEN (NEW.value = '{x}') EXECUTE FUNCTION test_gate()"
            )
        )

    async def until(wait_event: str) -> None:
        """Until a backend of this database waits on a lock of this kind."""
        query = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = :event"
        )
        for _ in range(500):
            async with db.read() as conn:
                if (await conn.execute(query, {"event": wait_event})).scalar_one():
                    return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no backend waits on {wait_event}")

    first, second = make_db(), make_db()
    batch_a = [sms_in(x, external_id="A-x"), sms_in(y, external_id="A-y")]
    batch_b = [sms_in(y, external_id="B-y"), sms_in(x, external_id="B-x")]
    async with db.engine.connect() as holder:
        await holder.execute(sa.text(f"SELECT pg_advisory_lock({gate})"))
        a = asyncio.create_task(ingest(first, batch_a, region=REGION))
        await until("advisory")  # A holds X
        b = asyncio.create_task(ingest(second, batch_b, region=REGION))
        await until("transactionid")  # B waits for A
        await holder.execute(sa.text(f"SELECT pg_advisory_unlock({gate})"))
        await holder.commit()
        results = await asyncio.gather(a, b, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert await count(db, customers) == 2
    assert await count(db, events) == 4


async def test_race_loser_leaves_no_orphan_customer(
    db: Database, make_db: Callable[[], Database]
) -> None:
    pools = [make_db() for _ in range(4)]
    numbers = [f"+1415555{200 + i:04d}" for i in range(10)]
    # Every pool ingests a batch holding all ten new numbers at once.
    batches = [[sms_in(n, external_id=f"{p}-{n}") for n in numbers] for p in range(len(pools))]
    await asyncio.gather(
        *(ingest(p, b, region=REGION) for p, b in zip(pools, batches, strict=True))
    )
    assert await count(db, customers) == 10
    assert await count(db, identities) == 10
    async with db.read() as conn:
        per_customer = (
            await conn.execute(
                sa.select(identities.c.value, sa.func.count(events.c.id))
                .join(events, events.c.customer_id == identities.c.customer_id)
                .group_by(identities.c.value)
            )
        ).all()
    assert dict(per_customer) == {n: 4 for n in numbers}
