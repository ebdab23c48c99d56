"""Calls whose final status callback was lost are settled from Twilio's Calls resource.

The hub's own Twilio client (the official SDK on ``TWILIO_API_BASE``) fetches each stale
call from the sandbox, which keeps every call's resource up to date while the callbacks
it was told to lose never arrive.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from channels.twilio.sandbox.shapes import call_resource
from hub.services import Services
from hub.voice_reconcile import Round, reconcile_calls
from hub.workers import channel_jobs
from tests.hub.voice.conftest import (
    ACCOUNT_SID,
    CUSTOMER,
    LEG_SID,
    OUR_NUMBER,
    PARENT_SID,
    STATUS,
    VOICE,
    VoiceHub,
    fixture_form,
)

NOW = timedelta(0)


def _services(hub: VoiceHub) -> Services:
    services: Services = hub.app.state.services
    return services


async def _reconcile(hub: VoiceHub) -> Round:
    services = _services(hub)
    assert services.twilio is not None
    return await reconcile_calls(services, services.twilio, grace=NOW)


async def _active(hub: VoiceHub) -> list[dict[str, Any]]:
    response = await hub.api.get("/api/v1/calls/active")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_lost_final_callback_is_fetched_and_applied(hub: VoiceHub) -> None:
    assert "voice-reconcile" in channel_jobs(_services(hub))[0]
    customer = await hub.customer_with("(212) 555-0160")
    # The agent's phone does not answer, and that callback is lost.
    hub.sandbox.voice.drop_statuses.add("no-answer")
    response = await hub.api.post(
        "/api/v1/calls", json={"customer_id": customer["id"], "agent_phone": "+14155550008"}
    )
    assert response.status_code == 202, response.text
    await hub.sandbox.settle()
    (stuck,) = await _active(hub)
    assert stuck["call_id"] == response.json()["id"] and stuck["state"] == "ringing"
    (agent_leg,) = hub.sandbox.calls.values()
    assert agent_leg["status"] == "no-answer"

    # Not yet stale: nothing is asked.
    services = _services(hub)
    assert services.twilio is not None
    assert await reconcile_calls(services, services.twilio) == Round()

    async with hub.stream() as messages:
        assert await _reconcile(hub) == Round(checked=1, changed=1)
        async for kind, data in messages:
            if kind == "call":
                assert (data["call_id"], data["state"]) == (stuck["call_id"], "completed")
                break
    assert await _active(hub) == []
    (event,) = await hub.timeline(customer["id"])
    assert (event["status"], event["external_id"]) == ("no-answer", agent_leg["sid"])
    assert event["data"]["answered"] is False
    # Settled: the next round has nothing to ask.
    assert await _reconcile(hub) == Round()


async def test_forward_only_and_unknown_calls(hub: VoiceHub) -> None:
    # Posted as Twilio would, but the sandbox never placed these calls: it does not know them.
    await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
    await hub.post(STATUS, fixture_form("voice_child_leg_in_progress.txt"))
    assert await _reconcile(hub) == Round(unknown=2)
    (call,) = await _active(hub)
    assert call["state"] == "in-progress"

    # Twilio's resources, behind what the hub knows: nothing moves backwards.
    parent = call_resource(ACCOUNT_SID, PARENT_SID, CUSTOMER, OUR_NUMBER)
    parent.update(direction="inbound", status="ringing")
    leg = call_resource(ACCOUNT_SID, LEG_SID, OUR_NUMBER, "client:alice")
    leg.update(direction="outbound-dial", status="ringing", parent_call_sid=PARENT_SID)
    hub.sandbox.calls.update({PARENT_SID: parent, LEG_SID: leg})
    assert await _reconcile(hub) == Round(checked=2)
    assert [c["state"] for c in await _active(hub)] == ["in-progress"]

    # Both ended; their callbacks never came.
    parent.update(status="completed", duration="75")
    leg.update(status="completed", duration="61")
    result = await _reconcile(hub)
    assert (result.checked, result.unknown) == (2, 0) and result.changed >= 1
    assert await _active(hub) == []
    (event,) = await hub.timeline(call["customer"]["id"])
    assert event["status"] == "completed"
    assert event["data"]["answered"] is True and event["data"]["missed"] is False
    assert (event["data"]["duration"], event["data"]["talk_seconds"]) == (75, 61)


async def test_a_caller_who_hung_up_unheard_is_settled(hub: VoiceHub) -> None:
    # Nobody answers, the caller hangs up at the voicemail beep, and the number's
    # final status callback is lost: only Twilio knows the call ended.
    hub.sandbox.voice.drop_statuses.add("completed")
    result = await hub.sandbox.call_hub("+14155550170", OUR_NUMBER, answer=False)
    await hub.sandbox.settle()
    (stuck,) = await _active(hub)
    assert stuck["external_id"] == result.sid
    assert hub.sandbox.calls[result.sid]["status"] == "completed"

    outcome = await _reconcile(hub)
    assert outcome.changed == 1 and outcome.unknown == 0
    assert await _active(hub) == []
    (event,) = await hub.timeline(stuck["customer"]["id"])
    assert (event["status"], event["data"]["missed"]) == ("completed", True)
    assert event["data"]["answered"] is False
