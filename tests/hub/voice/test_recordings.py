"""Recordings and voicemail: attached to the call, played through the hub, URL never shown."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.hub.voice.conftest import (
    OUR_NUMBER,
    PARENT_SID,
    RECORDING,
    RECORDING_SID,
    STATUS,
    VOICE,
    VoiceHub,
    fixture_form,
)


async def _call_event(hub: VoiceHub, customer_id: str) -> dict[str, Any]:
    (event,) = [e for e in await hub.timeline(customer_id) if e["channel"] == "voice"]
    return event


async def test_a_recorded_call_plays_through_the_hub(hub: VoiceHub) -> None:
    customer = await hub.customer_with("+14155550150")
    seen: list[Any] = []
    async with hub.stream() as messages:
        result = await hub.sandbox.call_hub("+14155550150", OUR_NUMBER)
        await hub.sandbox.settle()
        async for kind, data in messages:
            seen.append(data)
            if kind == "timeline" and data["data"].get("recording"):
                break
    event = await _call_event(hub, customer["id"])
    assert event["external_id"] == result.sid
    (recording_sid,) = hub.sandbox.voice.recordings
    recording = event["data"]["recording"]
    assert recording == {
        "sid": recording_sid,
        "status": "completed",
        "duration": 61,
        "channels": 1,
        "source": "DialVerb",
        "url": f"/api/v1/calls/{event['id']}/recording",
    }
    assert "voicemail" not in event["data"]

    audio = await hub.api.get(recording["url"])
    assert audio.status_code == 200, audio.text
    assert audio.headers["content-type"] == "audio/x-wav"
    assert audio.content == hub.sandbox.voice.audio[recording_sid]
    assert audio.content.startswith(b"RIFF") and b"WAVE" in audio.content[:12]
    part = await hub.api.get(recording["url"], headers={"Range": "bytes=0-43"})
    assert part.status_code == 206
    assert part.content == audio.content[:44]
    assert part.headers["content-range"] == f"bytes 0-43/{len(audio.content)}"

    # The provider's URL appears in no answer and no live message.
    exported = await hub.api.get(f"/api/v1/customers/{customer['id']}/export")
    active = await hub.api.get("/api/v1/calls/active")
    shown = json.dumps([seen, event, exported.json(), active.json()])
    assert hub.sandbox.voice.recordings[recording_sid]["media_url"] not in shown
    assert "/Recordings/" not in shown and hub.sandbox.base_url not in shown  # type: ignore[operator]

    anonymous = await hub.raw.get(recording["url"])
    assert anonymous.status_code == 401


async def test_a_voicemail_is_a_missed_call_with_its_recording_and_transcript(
    hub: VoiceHub,
) -> None:
    customer = await hub.customer_with("+14155550151")
    message = "Hi it is Ann please call me back about Friday"
    async with httpx.AsyncClient(base_url=hub.sandbox.base_url or "", timeout=5) as phone:
        bad = await phone.post("/sandbox/calls", json={"from": "555", "to": OUR_NUMBER})
        placed = await phone.post(
            "/sandbox/calls",
            json={"from": "+14155550151", "to": OUR_NUMBER, "answer": False, "voicemail": message},
        )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_from"
    assert placed.status_code == 200 and placed.json()["hub_status"] == 200
    await hub.sandbox.settle()
    event = await _call_event(hub, customer["id"])
    assert event["external_id"] == placed.json()["sid"]
    assert (event["status"], event["data"]["missed"]) == ("completed", True)
    assert event["data"]["voicemail"] is True
    assert event["data"]["recording"]["source"] == "RecordVerb"
    assert event["data"]["transcript"]["status"] == "completed"
    assert event["text"] == message
    search = await hub.api.get(
        f"/api/v1/customers/{customer['id']}/timeline", params={"q": "Friday"}
    )
    assert [e["id"] for e in search.json()["items"]] == [event["id"]]
    audio = await hub.api.get(event["data"]["recording"]["url"])
    assert audio.content == hub.sandbox.voice.audio[event["data"]["recording"]["sid"]]


async def test_recorded_recording_and_transcription_callbacks_attach_to_their_call(
    hub: VoiceHub,
) -> None:
    await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
    await hub.post(STATUS, fixture_form("voice_status_completed.txt"))
    in_progress = fixture_form("voice_recording_completed.txt", RecordingStatus="in-progress")
    for form in (
        fixture_form("voice_recording_completed.txt"),
        in_progress,  # late, never over a completed one
        fixture_form("voice_transcription.txt"),
    ):
        response = await hub.post(RECORDING, form)
        assert response.status_code == 200
    customer_id = (await hub.api.get("/api/v1/customers")).json()["items"][0]["id"]
    event = await _call_event(hub, customer_id)
    assert event["external_id"] == PARENT_SID
    recording = event["data"]["recording"]
    assert recording["sid"] == RECORDING_SID and recording["status"] == "completed"
    assert (recording["duration"], recording["source"]) == (58, "DialVerb")
    assert event["text"].startswith("Hi, this is Ann.")
    assert event["data"]["transcript"]["status"] == "completed"
    assert "api.twilio.com" not in json.dumps(event)
    # The sandbox never made this recording: the provider answers 404, so does the hub.
    gone = await hub.api.get(recording["url"])
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


async def test_a_call_without_a_recording_is_404(hub: VoiceHub) -> None:
    await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
    customer_id = (await hub.api.get("/api/v1/customers")).json()["items"][0]["id"]
    event = await _call_event(hub, customer_id)
    response = await hub.api.get(f"/api/v1/calls/{event['id']}/recording")
    assert response.status_code == 404 and response.json()["error"]["code"] == "no_recording"
    note = await hub.api.post(f"/api/v1/customers/{customer_id}/notes", json={"text": "x"})
    response = await hub.api.get(f"/api/v1/calls/{note.json()['id']}/recording")
    assert response.status_code == 404
    response = await hub.api.get("/api/v1/calls/nope/recording")
    assert response.status_code == 404


async def test_the_sandbox_serves_recordings_only_with_the_account_credentials(
    hub: VoiceHub,
) -> None:
    await hub.sandbox.call_hub("+14155550152", OUR_NUMBER)
    await hub.sandbox.settle()
    ((sid, resource),) = hub.sandbox.voice.recordings.items()
    async with httpx.AsyncClient(timeout=5) as client:
        url = resource["media_url"]
        assert (await client.get(url)).status_code == 401
        auth = (hub.settings.twilio_account_sid or "", hub.settings.twilio_auth_token or "")
        assert (await client.get(url, auth=(auth[0], "wrong"))).status_code == 401
        wav = await client.get(url + ".wav", auth=auth)
        assert wav.content == hub.sandbox.voice.audio[sid]
        meta = await client.get(url + ".json", auth=auth)
        assert meta.json()["sid"] == sid and meta.json()["call_sid"] in hub.sandbox.calls
        assert (await client.get(url + ".mp3", auth=auth)).status_code == 404
