"""A whole conversation: the customer texts, an agent answers, the sandbox delivers."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.hub.sms.conftest import CUSTOMER, OTHER_NUMBER, SmsHub, wait_for


async def test_customer_texts_agent_answers_and_the_reply_is_delivered(hub: SmsHub) -> None:
    updates: list[dict[str, Any]] = []

    async def watch(sub: Any) -> None:
        async for topic, item in sub:
            if topic == "timeline":
                updates.append(item.to_json())

    with hub.services.publisher.subscribe() as sub:
        watcher = asyncio.create_task(watch(sub))
        try:
            # The customer texts our second number; the hub stores it and answers empty TwiML.
            texted = await hub.sandbox.text_hub(
                CUSTOMER, OTHER_NUMBER, "Can we move my appointment?"
            )
            assert texted.status_code == 200
            assert "<Response>" in texted.response_text or "<Response/>" in texted.response_text
            customer_id = await hub.customer_for(CUSTOMER)
            [inbound] = await hub.timeline(customer_id)
            assert inbound["direction"] == "inbound"
            assert inbound["external_id"] == texted.sid
            assert inbound["status"] == "received"
            assert (inbound["from"], inbound["to"]) == (CUSTOMER, OTHER_NUMBER)

            # The agent answers through the API: 202 with the queued event.
            answer = await hub.send(customer_id, "Sure, Thursday at 10?")
            assert answer.status_code == 202, answer.text
            queued = answer.json()
            assert queued["status"] == "queued"
            assert queued["external_id"] is None
            # The reply goes from the number the customer used, into the same thread.
            assert (queued["from"], queued["to"]) == (OTHER_NUMBER, CUSTOMER)
            assert queued["thread_id"] == inbound["thread_id"]

            # The sender hands it to Twilio; the sandbox delivers it and calls back.
            assert await hub.sender().run_once() == 1
            await hub.sandbox.settle()
            event = await wait_for(lambda: _delivered(hub, queued["id"]), within=5)
            [at_twilio] = hub.outbound_at_sandbox()
            assert event["external_id"] == at_twilio["sid"]
            assert at_twilio["status"] == "delivered"
            assert at_twilio["from"] == OTHER_NUMBER
            [row] = await hub.outbox_rows(queued["id"])
            assert (row["state"], row["provider_id"]) == ("sent", at_twilio["sid"])

            # The customer's phone shows both sides of the conversation.
            phone = hub.sandbox.phone_log(CUSTOMER)
            assert [(m["direction"], m["body"]) for m in phone] == [
                ("inbound", "Can we move my appointment?"),
                ("outbound-api", "Sure, Thursday at 10?"),
            ]
            assert phone[-1]["status"] == "delivered"

            # Every callback the sandbox sent was accepted.
            assert hub.sandbox.callbacks
            assert {c.status_code for c in hub.sandbox.callbacks} == {200}

            # The live stream saw the reply go queued -> sent -> delivered.
            await wait_for(
                lambda: (
                    [u["status"] for u in updates if u["id"] == queued["id"]][-1:] == ["delivered"]
                )
            )
        finally:
            watcher.cancel()
    statuses = [u["status"] for u in updates if u["id"] == queued["id"]]
    assert statuses[0] == "queued"
    assert statuses[-1] == "delivered"
    assert "sent" in statuses
    assert statuses.index("sent") < statuses.index("delivered")
    assert [u["external_id"] for u in updates if u["id"] == inbound["id"]] == [texted.sid]

    timeline = await hub.timeline(customer_id)
    assert [(e["direction"], e["status"]) for e in timeline] == [
        ("outbound", "delivered"),
        ("inbound", "received"),
    ]


async def _delivered(hub: SmsHub, event_id: str) -> dict[str, Any] | None:
    event = await hub.event(event_id)
    return event if event["status"] == "delivered" else None
