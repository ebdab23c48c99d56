"""An incoming call: stored, screen pop on the live stream before the TwiML, routed."""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from channels.twilio.forms import encode_form
from channels.twilio.signature import SIGNATURE_HEADER, sign
from tests.hub.voice.conftest import (
    AUTH_TOKEN,
    CUSTOMER,
    OUR_NUMBER,
    PARENT_SID,
    PUBLIC_URL,
    VOICE,
    StartHub,
    VoiceHub,
    fixture_form,
)
from timeline.schema import calls, customers, events


async def _next_call(messages: Any, sid: str | None = None) -> dict[str, Any]:
    """The next screen pop (of the call ``sid`` when given) on the stream."""
    async with asyncio.timeout(5):
        async for event, data in messages:
            if event == "call" and sid in (None, data["external_id"]):
                pop: dict[str, Any] = data
                return pop
    raise AssertionError("the stream ended")


async def test_the_screen_pop_reaches_an_agent_before_the_twiml(hub: VoiceHub) -> None:
    customer = await hub.customer_with("(415) 555-0100")
    response = await hub.api.post(
        f"/api/v1/customers/{customer['id']}/notes", json={"text": "prefers mornings"}
    )
    note = response.json()
    services = hub.app.state.services
    async with hub.stream() as messages:
        with services.publisher.subscribe() as watcher:
            answer = await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
            # Published before the answer was sent, not after.
            published = []
            while not watcher.queue.empty():
                published.append(watcher.queue.get_nowait())
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/xml")
        assert "call" in [topic for topic, _ in published]
        pop = await _next_call(messages)

    assert pop["customer"]["id"] == customer["id"]
    assert pop["customer"]["phones"] == [CUSTOMER]
    assert pop["external_id"] == PARENT_SID
    assert (pop["state"], pop["status"], pop["direction"]) == ("ringing", "ringing", "inbound")
    assert (pop["from"], pop["to"]) == (CUSTOMER, OUR_NUMBER)
    timeline = pop["timeline"]
    assert [e["id"] for e in timeline] == [pop["call_id"], note["id"]]
    assert timeline[0]["channel"] == "voice" and timeline[0]["kind"] == "call"
    assert timeline[0]["status"] == "ringing" and timeline[0]["direction"] == "inbound"
    assert timeline == await hub.timeline(customer["id"])
    assert await hub.count(customers) == 1

    # The TwiML rings both browser clients, then asks what to do next.
    root = ET.fromstring(answer.text)
    (dial,) = root.findall("Dial")
    assert [c.text for c in dial.findall("Client")] == ["alice", "bob"]
    assert dial.get("timeout") == "15" and dial.get("answerOnBridge") == "true"
    assert dial.get("record") == "record-from-answer"
    query = f"event={pop['call_id']}"
    assert dial.get("action") == f"{PUBLIC_URL}/webhooks/twilio/voice/dial?{query}&step=dial"
    for client in dial.findall("Client"):
        assert client.get("statusCallback") == f"{PUBLIC_URL}/webhooks/twilio/voice/status?{query}"
        assert client.get("statusCallbackEvent") == "initiated ringing answered completed"
    assert dial.get("recordingStatusCallback") == (
        f"{PUBLIC_URL}/webhooks/twilio/voice/recording?{query}"
    )


async def test_callers_are_found_whatever_format_their_number_was_stored_in(
    hub: VoiceHub,
) -> None:
    stored = {
        "+12125550101": "(212) 555-0101",
        "+12125550102": "212.555.0102",
        "+12125550103": "+1 212 555 0103",
        "+12125550104": "tel:+1-212-555-0104",
    }
    known = {e164: (await hub.customer_with(raw))["id"] for e164, raw in stored.items()}
    async with hub.stream() as messages:
        for e164 in stored:
            result = await hub.sandbox.call_hub(e164, OUR_NUMBER)
            assert result.status_code == 200
            pop = await _next_call(messages, result.sid)
            assert pop["customer"]["id"] == known[e164]
            assert pop["from"] == e164
    assert await hub.count(customers) == len(stored)


async def test_an_unknown_caller_becomes_a_customer(hub: VoiceHub) -> None:
    async with hub.stream() as messages:
        result = await hub.sandbox.call_hub("+12125550123", OUR_NUMBER)
        assert result.status_code == 200
        pop = await _next_call(messages)
    assert pop["customer"]["phones"] == ["+12125550123"]
    assert pop["customer"]["name"] is None
    assert [e["id"] for e in pop["timeline"]] == [pop["call_id"]]
    assert await hub.count(customers) == 1


async def test_the_same_webhook_twice_stores_one_call(hub: VoiceHub) -> None:
    first = await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
    again = await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
    assert first.status_code == again.status_code == 200
    assert first.text == again.text
    assert await hub.count(events) == 1
    assert await hub.count(calls) == 1


async def test_a_bad_signature_is_403_and_changes_nothing(hub: VoiceHub) -> None:
    services = hub.app.state.services
    form = fixture_form("voice_inbound_call.txt")
    body = encode_form(form)
    plain = {"Content-Type": "application/x-www-form-urlencoded"}
    signed = {**plain, SIGNATURE_HEADER: sign(AUTH_TOKEN, PUBLIC_URL + VOICE, form)}
    with services.publisher.subscribe() as watcher:
        wrong = await hub.post(VOICE, form, token="not-the-token")
        missing = await hub.raw.post(VOICE, content=body, headers=plain)
        moved = await hub.raw.post(f"{VOICE}?step=x", content=body, headers=signed)
        assert watcher.queue.empty()
    for response in (wrong, missing, moved):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
    for table in (events, customers, calls):
        assert await hub.count(table) == 0


async def test_a_malformed_call_is_400_and_changes_nothing(hub: VoiceHub) -> None:
    cases = [
        ({"CallSid": ""}, "CallSid"),
        ({"CallSid": "CA not a sid"}, "CallSid"),
        ({"From": ""}, "From"),
        ({"To": ""}, "To"),
        ({"CallStatus": "exploded"}, "CallStatus"),
        ({"CallStatus": "completed"}, "CallStatus"),
        ({"Direction": "outbound-api"}, "Direction"),
    ]
    for change, field in cases:
        response = await hub.post(VOICE, fixture_form("voice_inbound_call.txt", **change))
        assert response.status_code == 400, change
        error = response.json()["error"]
        assert error["code"] == "bad_payload" and error["message"].startswith(field), error
    for table in (events, customers, calls):
        assert await hub.count(table) == 0


async def test_a_withheld_number_is_routed_but_stored_nowhere(
    hub: VoiceHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with hub.stream() as messages:
        response = await hub.post(
            VOICE, fixture_form("voice_inbound_call.txt", From="anonymous", Caller="anonymous")
        )
        pop = await _next_call(messages)
    assert response.status_code == 200
    assert ET.fromstring(response.text).find("Dial") is not None
    assert pop["customer"] is None and pop["call_id"] is None and pop["from"] == "anonymous"
    for table in (events, customers, calls):
        assert await hub.count(table) == 0


async def test_the_greeting_and_the_route_come_from_the_settings(start_hub: StartHub) -> None:
    async with start_hub(
        twilio_voice_greeting="Thanks for calling.",
        twilio_voice_route="numbers",
        twilio_voice_agent_numbers=("+14155550111", "+14155550112"),
    ) as hub:
        response = await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
    assert response.status_code == 200
    root = ET.fromstring(response.text)
    assert [element.tag for element in root] == ["Say", "Dial"]
    assert root[0].text == "Thanks for calling."
    assert [n.text for n in root.findall("Dial/Number")] == ["+14155550111", "+14155550112"]
