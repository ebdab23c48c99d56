"""Queue mode: the agent who takes a queued caller is recorded as who answered."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from tests.hub.voice.conftest import (
    OUR_NUMBER,
    PARENT_SID,
    VOICE,
    StartHub,
    VoiceHub,
    fixture_form,
)
from timeline import store

AGENT = "/webhooks/twilio/voice/agent"
DEQUEUED = "/webhooks/twilio/voice/dequeued"
AGENT_CALL = "CA" + "a1" * 16


def _agent_form(caller: str = "client:carol") -> list[tuple[str, str]]:
    return [
        ("AccountSid", "AC3f1c2e8d9b7a4c6e5f0a1b2c3d4e5f6a"),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", AGENT_CALL),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", caller),
        ("Caller", caller),
        ("To", ""),
    ]


async def _event(hub: VoiceHub, sid: str) -> dict[str, Any]:
    async with hub.db.read() as conn:
        found = await store.find_event(conn, "voice", sid)
    assert found is not None
    return found.to_json()


async def test_the_agent_who_dequeues_a_caller_answered_it(start_hub: StartHub) -> None:
    async with start_hub(twilio_voice_route="queue", twilio_voice_queue="front-desk") as hub:
        hub.sandbox.voice.queue_agent = "bob"
        async with hub.stream() as messages:
            taken = await hub.sandbox.call_hub("+14155550145", OUR_NUMBER)
            await hub.sandbox.settle()
            async for kind, data in messages:
                if kind == "call" and data["state"] == "in-progress":
                    assert data["answered_by"] == "client:bob"
                    break
        event = await _event(hub, taken.sid)
        # Nobody calls in: the caller is bridged all the same, by the queue.
        hub.sandbox.voice.queue_agent = None
        other = await hub.sandbox.call_hub("+14155550146", OUR_NUMBER)
        await hub.sandbox.settle()
        fallback = await _event(hub, other.sid)
    assert (event["status"], event["data"]["missed"]) == ("completed", False)
    assert event["data"]["answered_by"] == "client:bob"
    assert event["data"]["queue_seconds"] == 5
    assert fallback["data"]["answered_by"] == "queue:front-desk"


async def test_the_agent_webhooks_check_what_they_are_given(start_hub: StartHub) -> None:
    async with start_hub(twilio_voice_route="queue", twilio_voice_queue="front-desk") as hub:
        answer = await hub.post(AGENT, _agent_form())
        assert answer.status_code == 200, answer.text
        assert "<Queue" in answer.text and ">front-desk</Queue>" in answer.text
        url = answer.text.split('url="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        path, query = urlsplit(url).path, urlsplit(url).query
        assert path == DEQUEUED and query == "agent=client%3Acarol"

        assert (await hub.post(AGENT, _agent_form("+14155550100"))).status_code == 400
        assert (await hub.post(AGENT, _agent_form(), token="wrong")).status_code == 403

        # The caller waits in the queue; carol's call takes them.
        await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
        form = [
            *fixture_form("voice_inbound_call.txt"),
            ("QueueSid", "QU" + "0" * 32),
            ("QueueTime", "12"),
            ("DequeingCallSid", AGENT_CALL),
        ]
        assert (await hub.post(DEQUEUED, form)).status_code == 400  # no agent
        taken = await hub.post(DEQUEUED, form, query=query)
        assert taken.status_code == 200, taken.text
        assert taken.headers["content-type"].startswith("text/xml")
        (call,) = (await hub.api.get("/api/v1/calls/active")).json()["items"]
        assert (call["external_id"], call["state"]) == (PARENT_SID, "in-progress")
        assert call["answered_by"] == "client:carol"
        event = await _event(hub, PARENT_SID)
        assert event["data"]["queue_seconds"] == 12

        # A second agent cannot take them again: the first answer stays.
        again = await hub.post(DEQUEUED, form, query="agent=client%3Adave")
        assert again.status_code == 200
        assert (await _event(hub, PARENT_SID))["data"]["answered_by"] == "client:carol"

        unknown = [(k, "CA" + "9" * 32 if k == "CallSid" else v) for k, v in form]
        assert (await hub.post(DEQUEUED, unknown, query=query)).status_code == 200
