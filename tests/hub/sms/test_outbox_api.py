"""POST /api/v1/messages and the outbox (RELIABILITY.md, Outbox 29 and 33).

29: a queued event and its outbox row commit together or not at all.
33: Idempotency-Key replays the first answer (errors included); the same key with
another body is 422; concurrent duplicates have one effect, and one message leaves.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from hub.sms_outbound import queue_sms
from tests.hub.sms.conftest import CUSTOMER, OUR_NUMBER, SmsHub
from timeline.schema import events, idempotency_keys
from timeline.schema import outbox as outbox_table


class Boom(Exception):
    pass


async def outbound_events(hub: SmsHub) -> int:
    return await hub.count(events, events.c.channel == "sms", events.c.direction == "outbound")


async def assert_one_row_per_queued_message(hub: SmsHub) -> None:
    """Every outbound SMS event has exactly one outbox row, and every row an event."""
    async with hub.db.read() as conn:
        per_event = (
            await conn.execute(
                sa.select(events.c.id, sa.func.count(outbox_table.c.id))
                .select_from(events.outerjoin(outbox_table, outbox_table.c.event_id == events.c.id))
                .where(events.c.channel == "sms", events.c.direction == "outbound")
                .group_by(events.c.id)
            )
        ).all()
        orphans = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(outbox_table.outerjoin(events, outbox_table.c.event_id == events.c.id))
                .where(events.c.id.is_(None))
            )
        ).scalar_one()
    assert [n for _, n in per_event if n != 1] == []
    assert orphans == 0


# -- 29 ----------------------------------------------------------------------------------


async def test_29_a_rolled_back_transaction_leaves_neither_event_nor_row(hub: SmsHub) -> None:
    customer_id = await hub.create_customer()
    with pytest.raises(Boom):
        async with hub.db.write() as conn:
            stored = await queue_sms(conn, hub.settings, customer_id=customer_id, text="never")
            # Both were written in this transaction ...
            assert (
                await conn.execute(sa.select(sa.func.count()).where(events.c.id == stored.id))
            ).scalar_one() == 1
            assert (
                await conn.execute(
                    sa.select(sa.func.count()).where(outbox_table.c.event_id == stored.id)
                )
            ).scalar_one() == 1
            raise Boom  # ... and the request fails before the commit.
    assert await outbound_events(hub) == 0
    assert await hub.count(outbox_table) == 0


async def test_29_a_failing_outbox_insert_takes_the_event_with_it(hub: SmsHub) -> None:
    customer_id = await hub.create_customer()
    async with hub.db.write() as conn:
        await queue_sms(
            conn, hub.settings, customer_id=customer_id, text="first", idempotency_key="rem-42"
        )
    # The second insert of the row fails (its key is taken) after the event was inserted.
    with pytest.raises(IntegrityError):
        async with hub.db.write() as conn:
            await queue_sms(
                conn, hub.settings, customer_id=customer_id, text="second", idempotency_key="rem-42"
            )
    assert await outbound_events(hub) == 1
    assert await hub.count(outbox_table) == 1
    assert await hub.count(events, events.c.text == "second") == 0
    await assert_one_row_per_queued_message(hub)


async def test_29_every_queued_message_has_exactly_one_outbox_row(hub: SmsHub) -> None:
    customers = [await hub.create_customer([f"+1415555{4000 + i:04d}"]) for i in range(5)]
    no_phone = (await hub.http.post("/api/v1/customers", json={"name": "No phone"})).json()["id"]

    answers = await asyncio.gather(
        *(hub.send(cid, f"Hello {n}") for n in range(4) for cid in customers),
        hub.send(no_phone, "nowhere to send"),
        hub.send("nosuchcustomer", "nobody"),
    )
    statuses = [a.status_code for a in answers]
    assert statuses == [202] * 20 + [422, 404], [a.text for a in answers[-2:]]
    assert answers[-2].json()["error"]["code"] == "no_phone"
    assert await outbound_events(hub) == 20
    assert await hub.count(outbox_table, outbox_table.c.state == "pending") == 20
    await assert_one_row_per_queued_message(hub)
    for answer in answers[:20]:
        [row] = await hub.outbox_rows(answer.json()["id"])
        assert row["payload"]["body"] == answer.json()["text"]
        assert row["payload"]["from"] == OUR_NUMBER
        assert row["payload"]["to"] == answer.json()["to"]

    assert await hub.drain() == 20
    assert len(hub.outbound_at_sandbox()) == 20
    await assert_one_row_per_queued_message(hub)


# -- 33 ----------------------------------------------------------------------------------


async def test_33_idempotency_key_replays_and_refuses_another_body(hub: SmsHub) -> None:
    customer_id = await hub.create_customer()
    first = await hub.send(customer_id, "Your code is 4711", key="send-1")
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers

    again = await hub.send(customer_id, "Your code is 4711", key="send-1")
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()

    other = await hub.send(customer_id, "Your code is 4712", key="send-1")
    assert other.status_code == 422, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"

    assert await outbound_events(hub) == 1
    assert await hub.count(outbox_table) == 1
    assert await hub.drain() == 1
    assert [m["body"] for m in hub.outbound_at_sandbox()] == ["Your code is 4711"]
    # After the send, the replay still answers what was first answered.
    late = await hub.send(customer_id, "Your code is 4711", key="send-1")
    assert late.json() == first.json()
    assert len(hub.outbound_at_sandbox()) == 1


async def test_33_ten_concurrent_duplicates_have_one_effect(hub: SmsHub) -> None:
    customer_id = await hub.create_customer()
    answers = await asyncio.gather(
        *(hub.send(customer_id, "Only once, please", key="dup-10") for _ in range(10))
    )
    assert [a.status_code for a in answers] == [202] * 10, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(1 for a in answers if a.headers.get("idempotent-replayed") == "true") == 9
    assert await outbound_events(hub) == 1
    assert await hub.count(outbox_table) == 1
    assert await hub.count(idempotency_keys) == 1

    assert await hub.drain() == 1
    await hub.sandbox.settle()
    [message] = hub.outbound_at_sandbox()
    assert message["body"] == "Only once, please"
    assert [m["body"] for m in hub.sandbox.phone_log(CUSTOMER)] == ["Only once, please"]


async def test_33_an_error_answer_is_replayed_too(hub: SmsHub) -> None:
    await hub.sandbox.text_hub(CUSTOMER, OUR_NUMBER, "STOP")
    customer_id = await hub.customer_for(CUSTOMER)
    refused = await hub.send(customer_id, "Hello?", key="after-stop")
    assert refused.status_code == 409
    await hub.sandbox.text_hub(CUSTOMER, OUR_NUMBER, "START")
    # The same key replays the stored 409, although a new send would now be accepted.
    replayed = await hub.send(customer_id, "Hello?", key="after-stop")
    assert replayed.status_code == 409
    assert replayed.json() == refused.json()
    assert replayed.headers["idempotent-replayed"] == "true"
    assert await outbound_events(hub) == 0
    fresh = await hub.send(customer_id, "Hello?", key="after-start")
    assert fresh.status_code == 202
    assert await hub.count(outbox_table) == 1
