"""Click-to-call: the agent's phone rings first, then the customer's; one outbound event."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tests.hub.voice.conftest import OUR_NUMBER, StartHub, VoiceHub
from timeline.schema import calls, events

AGENT_PHONE = "+14155550177"


async def _call(hub: VoiceHub, customer_id: str, **body: Any) -> dict[str, Any]:
    response = await hub.api.post("/api/v1/calls", json={"customer_id": customer_id, **body})
    assert response.status_code == 202, response.text
    event: dict[str, Any] = response.json()
    return event


async def test_click_to_call_rings_the_agent_then_bridges_the_customer(hub: VoiceHub) -> None:
    customer = await hub.customer_with("(212) 555-0160")
    async with hub.stream() as messages:
        queued = await _call(hub, customer["id"], agent_phone="(415) 555-0177")
        await hub.sandbox.settle()
        states = []
        async for kind, data in messages:
            if kind == "call" and data["call_id"] == queued["id"]:
                states.append(data["state"])
                if data["state"] == "completed":
                    break
    assert (queued["status"], queued["direction"], queued["kind"]) == ("queued", "outbound", "call")
    assert (queued["from"], queued["to"]) == (OUR_NUMBER, "+12125550160")
    assert queued["data"]["agent"] and queued["data"]["click_to_call"] is True
    assert "in-progress" in states

    # At the provider: our number called the agent; the bridge dialled the customer.
    (agent_leg,) = [c for c in hub.sandbox.calls.values() if c["direction"] == "outbound-api"]
    (customer_leg,) = [c for c in hub.sandbox.calls.values() if c["direction"] == "outbound-dial"]
    assert (agent_leg["from"], agent_leg["to"]) == (OUR_NUMBER, AGENT_PHONE)
    assert (customer_leg["from"], customer_leg["to"]) == (OUR_NUMBER, "+12125550160")
    assert customer_leg["parent_call_sid"] == agent_leg["sid"]
    assert agent_leg["status"] == customer_leg["status"] == "completed"

    (event,) = await hub.timeline(customer["id"])
    assert event["id"] == queued["id"] and event["external_id"] == agent_leg["sid"]
    assert (event["status"], event["data"]["answered"]) == ("completed", True)
    assert event["data"]["duration"] == 61
    assert "missed" not in event["data"]
    assert await hub.count(events) == 1
    assert (await hub.api.get("/api/v1/calls/active")).json()["items"] == []


async def test_a_customer_who_does_not_pick_up(hub: VoiceHub) -> None:
    busy = await hub.customer_with("+12125550009")
    away = await hub.customer_with("+12125550008")
    await _call(hub, busy["id"], agent_phone=AGENT_PHONE)
    await _call(hub, away["id"], agent_phone=AGENT_PHONE)
    await hub.sandbox.settle()
    (first,) = await hub.timeline(busy["id"])
    (second,) = await hub.timeline(away["id"])
    assert first["status"] == "busy" and second["status"] == "no-answer"
    assert first["data"]["answered"] is False


async def test_an_agent_who_does_not_pick_up(hub: VoiceHub) -> None:
    customer = await hub.customer_with("+12125550161")
    await _call(hub, customer["id"], agent_phone="+14155550008")
    await hub.sandbox.settle()
    (event,) = await hub.timeline(customer["id"])
    assert event["status"] == "no-answer"
    assert [c["direction"] for c in hub.sandbox.calls.values()] == ["outbound-api"]


async def test_the_agent_phone_setting_and_refusals(start_hub: StartHub) -> None:
    async with start_hub(twilio_agent_phone=AGENT_PHONE) as hub:
        customer = await hub.customer_with("+12125550162")
        nobody = (await hub.api.post("/api/v1/customers", json={"name": "No phone"})).json()
        headers = {"Idempotency-Key": "call-1"}
        first = await hub.api.post(
            "/api/v1/calls", json={"customer_id": customer["id"]}, headers=headers
        )
        again = await hub.api.post(
            "/api/v1/calls", json={"customer_id": customer["id"]}, headers=headers
        )
        assert first.status_code == again.status_code == 202
        assert again.headers["idempotent-replayed"] == "true"
        assert first.json()["id"] == again.json()["id"]
        await hub.sandbox.settle()
        assert [c["to"] for c in hub.sandbox.calls.values() if not c["parent_call_sid"]] == [
            AGENT_PHONE
        ]
        for body, status, code in (
            ({"customer_id": nobody["id"]}, 422, "no_phone"),
            ({"customer_id": "missing"}, 404, "not_found"),
            ({"customer_id": customer["id"], "agent_phone": "12"}, 422, "invalid_field"),
            ({"customer_id": customer["id"], "extra": 1}, 422, "invalid_field"),
        ):
            response = await hub.api.post("/api/v1/calls", json=body)
            assert response.status_code == status, (body, response.text)
            assert response.json()["error"]["code"] == code
        assert await hub.count(events, events.c.channel == "voice") == 1


async def test_a_refused_call_is_marked_failed(start_hub: StartHub) -> None:
    async with start_hub() as hub:
        customer = await hub.customer_with("+12125550163")
        nowhere = await hub.api.post("/api/v1/calls", json={"customer_id": customer["id"]})
        assert nowhere.status_code == 422 and nowhere.json()["error"]["field"] == "agent_phone"
        assert await hub.count(events) == 0
        hub.sandbox.fail_next_create(400, 21217, "Phone number is not a valid phone number")
        queued = await _call(hub, customer["id"], agent_phone=AGENT_PHONE)
        (event,) = await hub.timeline(customer["id"])
        assert event["id"] == queued["id"]
        assert event["status"] == "failed"
        assert event["data"]["error"]["code"] == 21217
        async with hub.db.read() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(calls))).scalar() == 0
