"""A click-to-call whose CallSid never reached us is settled from Twilio's list of calls.

The hub writes the ``queued`` event, then asks Twilio to ring the agent
(``hub.voice_outbound``). If its process dies in between, or after Twilio accepted the
call but before the answer was recorded, and the call's status callbacks come while the
hub is down, the event has no CallSid and no leg: nothing else would ever settle it.
Here the crash is reproduced step by step: the event is queued as ``POST /api/v1/calls``
does, the call is created at the sandbox through the hub's own Twilio client as
``place_call`` does, and the hub is unreachable while the call runs. The reconciliation
(``hub.voice_reconcile.settle_unplaced``) then finds the call in Twilio's list of calls
from our number (the official SDK against the sandbox) and applies it; a click-to-call
Twilio never received becomes ``failed`` (not placed), and nothing is placed again.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from channels.twilio import voice
from hub.services import Services
from hub.voice_outbound import queue_call
from hub.voice_reconcile import NOT_PLACED, Round, run_once, settle_unplaced
from hub.voice_state import WEBHOOK_BRIDGE, WEBHOOK_STATUS, webhook_url
from tests.hub.sms.conftest import free_port
from tests.hub.voice.conftest import VoiceHub
from timeline.records import StoredEvent
from timeline.schema import agents

#: The sandbox's test number whose phone rings out (``CALL_TEST_NUMBERS``).
AGENT_AWAY = "+14155550008"
NOW = timedelta(0)


def _services(hub: VoiceHub) -> Services:
    services: Services = hub.app.state.services
    return services


async def _queue(hub: VoiceHub, customer_id: str) -> StoredEvent:
    """What ``POST /api/v1/calls`` commits before it asks Twilio."""
    services = _services(hub)
    async with services.db.write() as conn:
        agent_id = (await conn.execute(sa.select(agents.c.id).limit(1))).scalar_one()
        return await queue_call(conn, services.settings, customer_id=customer_id, agent_id=agent_id)


async def _create_while_the_hub_is_down(hub: VoiceHub, event: StoredEvent) -> str:
    """Twilio accepts the call; the answer and every callback of it are lost."""
    services = _services(hub)
    assert services.twilio is not None and event.sender is not None
    reachable = hub.sandbox.hub_url
    hub.sandbox.hub_url = f"http://127.0.0.1:{free_port()}"
    try:
        record = await services.twilio.start_call(
            from_=event.sender,
            to=AGENT_AWAY,
            url=webhook_url(services.settings, WEBHOOK_BRIDGE, event=event.id),
            status_callback=webhook_url(services.settings, WEBHOOK_STATUS, event=event.id),
            status_callback_events=voice.LEG_EVENTS,
        )
        await hub.sandbox.settle()
    finally:
        hub.sandbox.hub_url = reachable
    return record.sid


async def test_a_call_twilio_placed_while_the_hub_was_down_is_settled(hub: VoiceHub) -> None:
    services = _services(hub)
    assert services.twilio is not None
    customer = await hub.customer_with("(212) 555-0160")
    event = await _queue(hub, customer["id"])
    sid = await _create_while_the_hub_is_down(hub, event)
    assert hub.sandbox.calls[sid]["status"] == "no-answer"
    (stuck,) = await hub.timeline(customer["id"])
    assert (stuck["status"], stuck["external_id"]) == ("queued", None)

    # Within the grace period nothing is asked.
    assert await settle_unplaced(services, services.twilio) == Round()
    async with hub.stream() as messages:
        assert await settle_unplaced(services, services.twilio, grace=NOW) == Round(1, 1)
        async for kind, data in messages:
            if kind == "call" and data["call_id"] == event.id:
                assert data["state"] == "completed"
                break
    (settled,) = await hub.timeline(customer["id"])
    assert (settled["status"], settled["external_id"]) == ("no-answer", sid)
    assert settled["data"]["answered"] is False and "error" not in settled["data"]
    assert (await hub.api.get("/api/v1/calls/active")).json()["items"] == []
    # Settled once: the next rounds find nothing, and nothing was placed again.
    assert await settle_unplaced(services, services.twilio, grace=NOW) == Round()
    await run_once(services, services.twilio)
    assert list(hub.sandbox.calls) == [sid]


async def test_a_call_twilio_never_received_is_marked_not_placed(hub: VoiceHub) -> None:
    services = _services(hub)
    assert services.twilio is not None
    customer = await hub.customer_with("(212) 555-0161")
    other = await hub.customer_with("(212) 555-0162")
    lost = await _queue(hub, customer["id"])
    # Another click-to-call from the same number went through: it is not this one's.
    placed = await hub.api.post(
        "/api/v1/calls", json={"customer_id": other["id"], "agent_phone": AGENT_AWAY}
    )
    assert placed.status_code == 202, placed.text
    await hub.sandbox.settle()
    assert len(hub.sandbox.calls) == 1

    assert await settle_unplaced(services, services.twilio) == Round()
    assert await settle_unplaced(services, services.twilio, grace=NOW) == Round(1, 1)
    (event,) = await hub.timeline(customer["id"])
    assert (event["id"], event["status"], event["external_id"]) == (lost.id, "failed", None)
    assert event["data"]["error"] == {"message": NOT_PLACED, "unknown": False}
    (placed_event,) = await hub.timeline(other["id"])
    assert placed_event["status"] == "no-answer"
    assert placed_event["external_id"] == next(iter(hub.sandbox.calls))
    # Failed for good: never asked again, never placed late.
    assert await settle_unplaced(services, services.twilio, grace=NOW) == Round()
    assert len(hub.sandbox.calls) == 1
