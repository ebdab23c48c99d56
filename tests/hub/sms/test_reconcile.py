"""Reconciliation with the sandbox's Messages list (RELIABILITY.md, Twilio 9, Outbox 31).

Lost status callbacks and lost inbound webhooks are repaired from the list; a send
whose outcome is unknown (Twilio accepted it, the answer never reached us, or the
worker died holding the claim) is settled by looking it up, never by a blind resend.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from tests.hub.sms.conftest import CUSTOMER, OUR_NUMBER, SmsHub, StartHub, free_port
from timeline import outbox
from timeline.events import Channel
from timeline.schema import events

SILENT = ("sent", "delivered", "undelivered", "failed")


async def queue_one(hub: SmsHub, text: str = "Your order has shipped") -> str:
    customer_id = await hub.create_customer()
    response = await hub.send(customer_id, text)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


# -- 9. lost callbacks and lost webhooks -------------------------------------------------


async def test_9_a_lost_delivered_callback_is_repaired(start_hub: StartHub) -> None:
    async with start_hub(drop_statuses=("delivered",)) as hub:
        event_id = await queue_one(hub)
        assert await hub.sender().run_once() == 1
        await hub.sandbox.settle()
        event = await hub.event(event_id)
        assert event["status"] == "sent"  # "delivered" never came
        [at_twilio] = hub.outbound_at_sandbox()
        assert at_twilio["status"] == "delivered"

        reconciler = hub.reconciler()
        # Within the grace period nothing is asked.
        assert await reconciler.repair_statuses() == 0
        assert await reconciler.repair_statuses(grace=timedelta(0)) == 1
        event = await hub.event(event_id)
        assert event["status"] == "delivered"
        assert event["external_id"] == at_twilio["sid"]
        # Settled: a second pass finds nothing to do.
        assert await reconciler.repair_statuses(grace=timedelta(0)) == 0


async def test_9_lost_failure_callbacks_are_repaired_with_the_error(start_hub: StartHub) -> None:
    async with start_hub(drop_statuses=SILENT) as hub:
        customer_id = await hub.create_customer(["+14155550005"])
        event_id = (await hub.send(customer_id, "hello")).json()["id"]
        assert await hub.sender().run_once() == 1
        await hub.sandbox.settle()
        assert (await hub.event(event_id))["status"] == "queued"
        assert await hub.reconciler().repair_statuses(grace=timedelta(0)) == 1
        event = await hub.event(event_id)
        assert event["status"] == "undelivered"
        assert event["data"]["ErrorCode"] == 30005


async def test_9_a_lost_inbound_webhook_is_repaired(hub: SmsHub) -> None:
    delivered = await hub.sandbox.text_hub(CUSTOMER, OUR_NUMBER, "first, delivered")
    assert delivered.status_code == 200
    # The hub is unreachable for the next one: Twilio gives up on the webhook.
    reachable = hub.sandbox.hub_url
    hub.sandbox.hub_url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(httpx.HTTPError):
        await hub.sandbox.text_hub(CUSTOMER, OUR_NUMBER, "second, lost")
    hub.sandbox.hub_url = reachable
    lost_sid = next(m["sid"] for m in hub.sandbox.messages.values() if m["body"] == "second, lost")
    assert await hub.event_by_sid(lost_sid) is None

    reconciler = hub.reconciler()
    assert await reconciler.repair_inbound() == 1
    repaired = await hub.event_by_sid(lost_sid)
    assert repaired is not None
    assert (repaired["direction"], repaired["status"], repaired["text"]) == (
        "inbound",
        "received",
        "second, lost",
    )
    first = await hub.event_by_sid(delivered.sid)
    assert first is not None
    assert repaired["customer_id"] == first["customer_id"]
    assert repaired["thread_key"] == first["thread_key"]
    # Repeating the pass stores nothing twice.
    assert await reconciler.repair_inbound() == 0
    assert await hub.count(events, events.c.direction == "inbound") == 2


# -- 31. the provider accepted, we never recorded it -------------------------------------


async def test_31_accepted_but_unrecorded_is_settled_without_a_resend(
    start_hub: StartHub,
) -> None:
    # Callbacks are lost too, so only reconciliation can tell what happened.
    async with start_hub(drop_statuses=SILENT) as hub:
        event_id = await queue_one(hub)
        hub.sandbox.fail_next_create(500, 20500, "Internal error", after_accept=True)
        sender = hub.sender()
        assert await sender.run_once() == 1
        [row] = await hub.outbox_rows(event_id)
        assert row["state"] == "unknown"
        assert row["provider_id"] is None
        assert (await hub.event(event_id))["external_id"] is None
        # Not resent by the next rounds.
        assert await sender.run_once() == 0
        [accepted] = hub.outbound_at_sandbox()
        await hub.sandbox.settle()  # Twilio goes on with it

        assert await hub.reconciler().settle_unknown() == 1
        [row] = await hub.outbox_rows(event_id)
        assert (row["state"], row["provider_id"]) == ("sent", accepted["sid"])
        event = await hub.event(event_id)
        assert event["external_id"] == accepted["sid"]
        assert event["status"] == "delivered"
        assert await sender.run_once() == 0
        assert len(hub.outbound_at_sandbox()) == 1
        assert await hub.reconciler().settle_unknown() == 0


async def test_31_two_unknown_sends_of_the_same_text_get_one_message_each(
    start_hub: StartHub,
) -> None:
    async with start_hub(drop_statuses=SILENT) as hub:
        customer_id = await hub.create_customer()
        first = (await hub.send(customer_id, "Reminder")).json()["id"]
        second = (await hub.send(customer_id, "Reminder")).json()["id"]
        hub.sandbox.fail_next_create(500, 20500, after_accept=True)
        hub.sandbox.fail_next_create(500, 20500, after_accept=True)
        assert await hub.sender(concurrency=1).run_once() == 2
        await hub.sandbox.settle()
        assert await hub.reconciler().settle_unknown() == 2
        rows = [(await hub.outbox_rows(e))[0] for e in (first, second)]
        assert [r["state"] for r in rows] == ["sent", "sent"]
        sids = {m["sid"] for m in hub.outbound_at_sandbox()}
        assert {r["provider_id"] for r in rows} == sids
        assert len(sids) == 2


async def test_31_a_claim_that_never_reached_twilio_is_sent_once(hub: SmsHub) -> None:
    event_id = await queue_one(hub)
    # A worker claimed the row and died before its create left.
    [claimed] = await outbox.claim(hub.db, Channel.SMS.value, "dead-worker")
    assert claimed.event_id == event_id
    assert await hub.sender().run_once() == 0  # claimed rows are nobody else's
    assert await outbox.recover_stale(hub.db, timedelta(0)) == 1
    [row] = await hub.outbox_rows(event_id)
    assert row["state"] == "unknown"
    assert await hub.sender().run_once() == 0  # unknown is never sent blindly

    # Twilio has nothing yet: within the grace period the row waits, still unknown.
    assert await hub.reconciler().settle_unknown() == 0
    [row] = await hub.outbox_rows(event_id)
    assert row["state"] == "unknown"
    # Past it, Twilio's list is complete for the row: it never left.
    assert await hub.reconciler().settle_unknown(grace=timedelta(0)) == 1
    [row] = await hub.outbox_rows(event_id)
    assert row["state"] == "pending"
    assert "never" in row["last_error"]
    assert await hub.sender().run_once() == 1
    [row] = await hub.outbox_rows(event_id)
    assert row["state"] == "sent"
    [message] = hub.outbound_at_sandbox()
    assert row["provider_id"] == message["sid"]
    assert (await hub.event(event_id))["external_id"] == message["sid"]
    assert await hub.sender().run_once() == 0
    assert await hub.reconciler().settle_unknown() == 0


async def test_31_accepted_unrecorded_and_called_back_is_not_sent_twice(hub: SmsHub) -> None:
    event_id = await queue_one(hub)
    hub.sandbox.fail_next_create(500, 20500, "Internal error", after_accept=True)
    assert await hub.sender().run_once() == 1
    [row] = await hub.outbox_rows(event_id)
    assert row["state"] == "unknown"
    await hub.sandbox.settle()  # Twilio's callbacks reach the hub, as they normally do
    [accepted] = hub.outbound_at_sandbox()
    assert (await hub.event(event_id))["external_id"] == accepted["sid"]

    await hub.reconciler().settle_unknown()
    await hub.sender().run_once()
    assert len(hub.outbound_at_sandbox()) == 1
    [row] = await hub.outbox_rows(event_id)
    assert (row["state"], row["provider_id"]) == ("sent", accepted["sid"])


async def test_31_accepted_but_still_queued_at_twilio_is_not_sent_twice(
    start_hub: StartHub,
) -> None:
    # Twilio holds the message in its queue for a while (a busy sender number).
    async with start_hub(callback_delay=30) as hub:
        await queue_one(hub)
        hub.sandbox.fail_next_create(500, 20500, "Internal error", after_accept=True)
        assert await hub.sender().run_once() == 1
        [accepted] = hub.outbound_at_sandbox()
        assert accepted["status"] == "queued"

        await hub.reconciler().settle_unknown()
        await hub.sender().run_once()
        assert len(hub.outbound_at_sandbox()) == 1
