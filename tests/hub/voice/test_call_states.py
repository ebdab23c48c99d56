"""One call, one event: status callbacks of the call and its legs, in any order."""

from __future__ import annotations

import logging
import random
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import sqlalchemy as sa

from tests.hub.voice.conftest import (
    DIAL,
    LEG_SID,
    OUR_NUMBER,
    PARENT_SID,
    STATUS,
    VOICE,
    StartHub,
    VoiceHub,
    fixture_form,
)
from timeline.schema import calls, customers, events

#: Everything Twilio reports of an answered call, in the order it happens.
ANSWERED_CALL = [
    "voice_status_ringing.txt",
    "voice_status_in_progress.txt",
    "voice_child_leg_in_progress.txt",
    "voice_child_leg_completed.txt",
    "voice_status_completed.txt",
]


def _form(name: str, parent: str, leg: str) -> list[tuple[str, str]]:
    form = fixture_form(name)
    swap = {PARENT_SID: parent, LEG_SID: leg}
    return [(key, swap.get(value, value)) for key, value in form]


async def _event(hub: VoiceHub, external_id: str) -> dict[str, Any]:
    async with hub.db.read() as conn:
        row = (
            (await conn.execute(sa.select(events).where(events.c.external_id == external_id)))
            .mappings()
            .one()
        )
    response = await hub.api.get(f"/api/v1/customers/{row['customer_id']}/timeline")
    (event,) = [e for e in response.json()["items"] if e["id"] == row["id"]]
    return event


async def _active(hub: VoiceHub) -> list[dict[str, Any]]:
    response = await hub.api.get("/api/v1/calls/active")
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_callbacks_in_any_order_settle_the_same(hub: VoiceHub) -> None:
    orders = [ANSWERED_CALL, list(reversed(ANSWERED_CALL))]
    shuffled = list(ANSWERED_CALL)
    random.Random(7).shuffle(shuffled)
    orders.append(shuffled)
    for n, order in enumerate(orders):
        parent, leg = f"CA{2 * n + 1:032x}", f"CA{2 * n + 2:032x}"
        inbound = await hub.post(VOICE, _form("voice_inbound_call.txt", parent, leg))
        assert inbound.status_code == 200
        event_id = (await _event(hub, parent))["id"]
        for name in order:
            # Half come to the number's callback, half to the URL with our event id.
            query = f"event={event_id}" if "child" in name else ""
            response = await hub.post(STATUS, _form(name, parent, leg), query=query)
            assert response.status_code == 200, (name, response.text)
        event = await _event(hub, parent)
        assert event["status"] == "completed", order
        assert event["data"]["answered"] is True
        assert event["data"]["missed"] is False
        assert event["data"]["answered_by"] == "client:alice"
        assert event["data"]["duration"] == 68 and event["data"]["talk_seconds"] == 61
    assert await hub.count(events) == len(orders)
    assert await hub.count(calls, calls.c.ended_at.is_(None)) == 0
    assert await _active(hub) == []


async def test_a_call_and_its_legs_are_one_event(hub: VoiceHub) -> None:
    customer = await hub.customer_with("+14155550142")
    async with hub.stream() as messages:
        result = await hub.sandbox.call_hub("+14155550142", OUR_NUMBER)
        assert result.status_code == 200
        await hub.sandbox.settle()
        states = []
        async for kind, data in messages:
            if kind == "call" and data["external_id"] == result.sid:
                states.append(data["state"])
                if data["state"] == "completed":
                    break
    assert states[0] == "ringing" and "in-progress" in states
    (event,) = await hub.timeline(customer["id"])
    assert event["external_id"] == result.sid
    assert (event["status"], event["direction"]) == ("completed", "inbound")
    assert event["data"]["answered_by"] == "client:alice"
    assert event["data"]["missed"] is False
    # Both browser clients rang (one answered, one was canceled): three legs, one event.
    legs = [c for c in hub.sandbox.calls.values() if c.get("parent_call_sid") == result.sid]
    assert sorted(leg["status"] for leg in legs) == ["canceled", "completed"]
    async with hub.db.read() as conn:
        rows = (await conn.execute(sa.select(calls.c.call_sid, calls.c.state))).all()
    assert {sid: state for sid, state in rows} == {
        result.sid: "completed",
        **{leg["sid"]: leg["status"] for leg in legs},
    }
    assert await hub.count(events) == 1


async def test_missed_calls_are_marked(hub: VoiceHub) -> None:
    # A call nobody answers, the caller hangs up at the voicemail prompt.
    unanswered = await hub.sandbox.call_hub("+14155550143", OUR_NUMBER, answer=False)
    # A call whose parent reports no-answer (the recorded callback).
    await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
    await hub.post(STATUS, fixture_form("voice_status_no_answer.txt"))
    # An answered one, for contrast.
    answered = await hub.sandbox.call_hub("+14155550144", OUR_NUMBER)
    await hub.sandbox.settle()
    first, second, third = (
        await _event(hub, unanswered.sid),
        await _event(hub, PARENT_SID),
        await _event(hub, answered.sid),
    )
    assert (first["status"], first["data"]["missed"]) == ("completed", True)
    assert first["data"]["answered"] is False and "answered_by" not in first["data"]
    assert (second["status"], second["data"]["missed"]) == ("no-answer", True)
    assert (third["status"], third["data"]["missed"]) == ("completed", False)
    assert await _active(hub) == []


async def test_after_an_unanswered_dial_the_caller_is_offered_voicemail(hub: VoiceHub) -> None:
    inbound = await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
    event_id = (await _event(hub, PARENT_SID))["id"]
    response = await hub.post(
        DIAL, fixture_form("voice_dial_no_answer.txt"), query=f"event={event_id}&step=dial"
    )
    assert inbound.status_code == response.status_code == 200
    root = ET.fromstring(response.text)
    assert [verb.tag for verb in root] == ["Say", "Record", "Hangup"]
    record = root[1]
    assert record.get("transcribe") == "true"
    assert record.get("transcribeCallback", "").endswith(f"/voice/recording?event={event_id}")
    assert record.get("action", "").endswith(f"/voice/dial?event={event_id}&step=recorded")
    # The unanswered leg is stored; the call still rings (the caller may leave a message).
    event = await _event(hub, PARENT_SID)
    assert event["status"] == "ringing" and event["data"]["answered"] is False
    assert await hub.count(calls, calls.c.call_sid == LEG_SID, calls.c.state == "no-answer") == 1
    assert [c["call_id"] for c in await _active(hub)] == [event_id]


async def test_a_callback_for_an_unknown_call_is_logged_and_answered_200(
    hub: VoiceHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hub.voice")
    for name, path in (
        ("voice_status_completed.txt", STATUS),
        ("voice_child_leg_in_progress.txt", STATUS),
        ("voice_recording_completed.txt", "/webhooks/twilio/voice/recording"),
    ):
        response = await hub.post(path, fixture_form(name))
        assert response.status_code == 200
    logged = [r.getMessage() for r in caplog.records if r.name == "hub.voice"]
    assert any("unknown call" in m and PARENT_SID in m for m in logged), logged
    assert not any("+1415" in m for m in logged)
    for table in (events, customers, calls):
        assert await hub.count(table) == 0


async def test_malformed_callbacks_are_400_and_change_nothing(hub: VoiceHub) -> None:
    await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
    before = await _event(hub, PARENT_SID)
    for name, path, change in (
        ("voice_status_completed.txt", STATUS, {"CallStatus": ""}),
        ("voice_status_completed.txt", STATUS, {"CallStatus": "vanished"}),
        ("voice_status_completed.txt", STATUS, {"CallDuration": "long"}),
        ("voice_child_leg_completed.txt", STATUS, {"ParentCallSid": "CA nope"}),
        ("voice_recording_completed.txt", "/webhooks/twilio/voice/recording", {"RecordingSid": ""}),
        (
            "voice_recording_completed.txt",
            "/webhooks/twilio/voice/recording",
            {"RecordingUrl": "ftp://x"},
        ),
        ("voice_dial_no_answer.txt", DIAL, {"DialCallStatus": "maybe"}),
    ):
        response = await hub.post(path, fixture_form(name, **change))
        assert response.status_code == 400, (name, change)
        assert response.json()["error"]["code"] == "bad_payload"
    assert await _event(hub, PARENT_SID) == before
    assert await hub.count(calls) == 1


async def test_queued_callers_are_answered_or_missed(start_hub: StartHub) -> None:
    async with start_hub(twilio_voice_route="queue", twilio_voice_queue="front-desk") as hub:
        taken = await hub.sandbox.call_hub("+14155550145", OUR_NUMBER)
        left = await hub.sandbox.call_hub("+14155550146", OUR_NUMBER, answer=False)
        await hub.sandbox.settle()
        first, second = await _event(hub, taken.sid), await _event(hub, left.sid)
    assert (first["status"], first["data"]["missed"]) == ("completed", False)
    # The sandbox's agent "alice" took the caller from the queue (<Dial><Queue url>).
    assert first["data"]["answered_by"] == "client:alice"
    assert first["data"]["queue_seconds"] == 5
    assert (second["status"], second["data"]["missed"]) == ("completed", True)
