"""Pure Twilio Voice: recorded webhook forms parsed, a call's state derived, TwiML built."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import pytest

from channels.twilio import twiml, voice
from channels.twilio.errors import PayloadError
from channels.twilio.signature import sign, verify
from tests.channels.twilio.conftest import AUTH_TOKEN, FIXTURES
from tests.channels.twilio.conftest import fixture_form as recorded
from timeline.events import Channel, Direction, IdentityKind, Kind

AT = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)
PARENT = "CA5d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a"
LEG = "CA9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
RECORDING = "RE1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"


def fixture_form(name: str, **changes: str) -> list[tuple[str, str]]:
    """A recorded payload with some fields replaced."""
    return [(key, changes.get(key, value)) for key, value in recorded(name)]


VOICE_FIXTURES = sorted(p.name for p in Path(FIXTURES).glob("voice_*.txt"))


def test_every_voice_fixture_is_signed_and_checked_like_a_webhook() -> None:
    assert len(VOICE_FIXTURES) == 10
    for name in VOICE_FIXTURES:
        form = fixture_form(name)
        url = "https://hub.example.com/webhooks/twilio/voice/status?event=abc"
        signature = sign(AUTH_TOKEN, url, form)
        assert verify(AUTH_TOKEN, url, form, None, signature)
        assert not verify(AUTH_TOKEN, url, form[1:], None, signature), name


def test_an_incoming_call() -> None:
    [event] = voice.parse_inbound_call(fixture_form("voice_inbound_call.txt"), received_at=AT)
    assert (event.channel, event.kind, event.direction) == (
        Channel.VOICE,
        Kind.CALL,
        Direction.INBOUND,
    )
    assert (event.external_id, event.status, event.occurred_at) == (PARENT, "ringing", AT)
    assert event.sender is not None and event.recipient is not None
    assert (event.sender.kind, event.sender.value) == (IdentityKind.PHONE, "+14155550100")
    assert event.recipient.value == "+14155550199"
    assert event.counterpart == event.sender
    assert event.data["answered"] is False
    assert event.data["FromCity"] == "SAN FRANCISCO"
    assert event.data["StirVerstat"] == "TN-Validation-Passed-A"
    assert "CallToken" not in event.data


@pytest.mark.parametrize(
    ("name", "sid", "parent", "status", "duration"),
    [
        ("voice_status_ringing.txt", PARENT, None, "ringing", None),
        ("voice_status_in_progress.txt", PARENT, None, "in-progress", None),
        ("voice_status_completed.txt", PARENT, None, "completed", 68),
        ("voice_status_no_answer.txt", PARENT, None, "no-answer", 0),
        ("voice_child_leg_in_progress.txt", LEG, PARENT, "in-progress", None),
        ("voice_child_leg_completed.txt", LEG, PARENT, "completed", 61),
    ],
)
def test_status_callbacks(
    name: str, sid: str, parent: str | None, status: str, duration: int | None
) -> None:
    update = voice.parse_call_status(fixture_form(name))
    assert (update.call_sid, update.parent_sid, update.status, update.duration) == (
        sid,
        parent,
        status,
        duration,
    )
    assert update.timestamp is not None and update.timestamp.tzinfo is not None
    assert update.sequence is not None
    assert "+1415" not in repr(update)
    if parent:
        assert (update.direction, update.to) == ("outbound-dial", "client:alice")


def test_recording_and_transcription_callbacks() -> None:
    recording = voice.parse_recording_callback(fixture_form("voice_recording_completed.txt"))
    assert isinstance(recording, voice.RecordingUpdate)
    assert (recording.call_sid, recording.recording_sid, recording.status) == (
        PARENT,
        RECORDING,
        "completed",
    )
    # What the event keeps: no provider URL, no zero error code.
    assert recording.summary() == {
        "sid": RECORDING,
        "status": "completed",
        "duration": 58,
        "channels": 1,
        "source": "DialVerb",
    }
    assert recording.url is not None and recording.url not in repr(recording)
    transcription = voice.parse_recording_callback(fixture_form("voice_transcription.txt"))
    assert isinstance(transcription, voice.TranscriptionUpdate)
    assert (transcription.call_sid, transcription.recording_sid) == (PARENT, RECORDING)
    assert transcription.status == "completed"
    assert transcription.text is not None and transcription.text.startswith("Hi, this is Ann.")
    assert "Ann" not in repr(transcription)
    failed = voice.parse_recording_callback(
        fixture_form("voice_transcription.txt", TranscriptionStatus="failed")
    )
    assert isinstance(failed, voice.TranscriptionUpdate) and failed.text is None


def test_dial_results() -> None:
    result = voice.parse_dial_result(fixture_form("voice_dial_no_answer.txt"))
    assert (result.call_sid, result.dial_call_sid, result.dial_status) == (
        PARENT,
        LEG,
        "no-answer",
    )
    assert not result.connected
    answered = voice.DialResult(PARENT, LEG, "completed", 61)
    bridged = voice.DialResult(PARENT, queue_result="bridged", queue_seconds=4)
    assert answered.connected and bridged.connected


@pytest.mark.parametrize(
    ("parse", "name", "change", "field"),
    [
        (voice.parse_inbound_call, "voice_inbound_call.txt", {"To": " "}, "To"),
        (voice.parse_call_status, "voice_status_completed.txt", {"CallSid": "CA-1"}, "CallSid"),
        (
            voice.parse_call_status,
            "voice_status_completed.txt",
            {"CallStatus": "done"},
            "CallStatus",
        ),
        (
            voice.parse_call_status,
            "voice_status_completed.txt",
            {"CallDuration": "-3"},
            "CallDuration",
        ),
        (
            voice.parse_call_status,
            "voice_status_completed.txt",
            {"Timestamp": "yesterday"},
            "Timestamp",
        ),
        (
            voice.parse_dial_result,
            "voice_dial_no_answer.txt",
            {"DialCallSid": "x y"},
            "DialCallSid",
        ),
        (
            voice.parse_recording_callback,
            "voice_recording_completed.txt",
            {"RecordingDuration": "1e3"},
            "RecordingDuration",
        ),
        (
            voice.parse_recording_callback,
            "voice_transcription.txt",
            {"TranscriptionText": "x" * 20_001},
            "TranscriptionText",
        ),
    ],
)
def test_malformed_forms_name_the_field(
    parse: object, name: str, change: dict[str, str], field: str
) -> None:
    assert callable(parse)
    with pytest.raises(PayloadError) as caught:
        parse(fixture_form(name, **change))
    assert caught.value.field == field


def test_recording_media_url() -> None:
    assert voice.recording_media_url("http://127.0.0.1:8001/", "AC1", RECORDING) == (
        f"http://127.0.0.1:8001/2010-04-01/Accounts/AC1/Recordings/{RECORDING}.wav"
    )


# -- one call, one event


def _settle(direction: str, facts: list[tuple[str, str]]) -> tuple[str, bool]:
    """Apply (leg, status) facts as the hub stores them: forward-only per leg."""
    ranks = {"queued": 0, "initiated": 1, "ringing": 2, "in-progress": 3}
    states: dict[str, str] = {}
    for leg, status in facts:
        current = states.get(leg)
        if current is None or (
            current not in voice.TERMINAL and ranks.get(status, 4) > ranks.get(current, 4)
        ):
            states[leg] = status
    answered = any(s in voice.ANSWERED for leg, s in states.items() if leg != "parent")
    legs = [voice.Leg(s) for leg, s in states.items() if leg != "parent"]
    return voice.call_state(direction, states.get("parent"), legs, answered=answered), answered


@pytest.mark.parametrize(
    ("direction", "facts", "status", "missed"),
    [
        (
            "inbound",
            [
                ("parent", "ringing"),
                ("parent", "in-progress"),
                ("a", "in-progress"),
                ("a", "completed"),
                ("b", "canceled"),
                ("parent", "completed"),
            ],
            "completed",
            False,
        ),
        ("inbound", [("a", "no-answer"), ("parent", "completed")], "completed", True),
        ("inbound", [("parent", "no-answer")], "no-answer", True),
        ("inbound", [("parent", "in-progress"), ("a", "ringing")], "ringing", False),
        ("outbound", [("parent", "in-progress"), ("c", "in-progress")], "in-progress", False),
        ("outbound", [("parent", "completed"), ("c", "completed")], "completed", False),
        ("outbound", [("parent", "in-progress"), ("c", "busy")], "busy", False),
        ("outbound", [("parent", "completed"), ("c", "no-answer")], "no-answer", False),
        ("outbound", [("parent", "no-answer")], "no-answer", False),
        ("outbound", [("parent", "completed")], "canceled", False),
        ("outbound", [("parent", "ringing")], "initiated", False),
    ],
)
def test_a_calls_state_does_not_depend_on_the_order_of_its_callbacks(
    direction: str, facts: list[tuple[str, str]], status: str, missed: bool
) -> None:
    for order in itertools.permutations(facts):
        got, answered = _settle(direction, list(order))
        assert got == status, order
        assert voice.is_missed(direction, got, answered=answered) is missed
    assert voice.call_state("outbound", None, [], answered=False) == "queued"


# -- TwiML


def _urls() -> dict[str, str]:
    return {
        "dial_action": "https://h/dial?event=e&step=dial",
        "status_callback": "https://h/status?event=e",
        "recording_callback": "https://h/recording?event=e",
        "voicemail_action": "https://h/dial?event=e&step=recorded",
    }


def test_routing_twiml() -> None:
    clients = ET.fromstring(twiml.route_call(twiml.Routing(clients=("alice",)), **_urls()))
    assert [v.tag for v in clients] == ["Dial"]
    dial = clients[0]
    assert "record" not in dial.attrib
    assert dial.get("action") == "https://h/dial?event=e&step=dial"
    assert dial.find("Client").text == "alice"  # type: ignore[union-attr]

    routing = twiml.Routing(route="numbers", numbers=("+14155550111",), greeting="Hello")
    numbers = ET.fromstring(twiml.route_call(routing, **_urls()))
    assert [v.tag for v in numbers] == ["Say", "Dial"]
    assert numbers.find("Dial/Number").get("statusCallback") == "https://h/status?event=e"  # type: ignore[union-attr]

    queue = ET.fromstring(twiml.route_call(twiml.Routing(route="queue", queue="desk"), **_urls()))
    assert queue[0].tag == "Enqueue" and queue[0].text == "desk"
    assert queue[0].get("action") == "https://h/dial?event=e&step=dial"

    nobody = ET.fromstring(twiml.route_call(twiml.Routing(voicemail_prompt="Speak."), **_urls()))
    assert [v.tag for v in nobody] == ["Say", "Record", "Hangup"]
    assert nobody[0].text == "Speak."
    record = nobody[1]
    assert record.get("maxLength") == str(twiml.VOICEMAIL_MAX_SECONDS)
    assert record.get("action") == "https://h/dial?event=e&step=recorded"
    assert record.get("transcribeCallback") == record.get("recordingStatusCallback")


def test_bridge_and_hangup_twiml() -> None:
    xml = twiml.bridge(
        "+12125550160",
        caller_id="+14155550199",
        status_callback="https://h/status?event=e",
        action="https://h/dial?event=e&step=bridge",
        record=True,
        recording_callback="https://h/recording?event=e",
    )
    root = ET.fromstring(xml)
    dial = root.find("Dial")
    assert dial is not None
    assert dial.get("callerId") == "+14155550199"
    assert dial.get("record") == "record-from-answer"
    assert dial.find("Number").text == "+12125550160"  # type: ignore[union-attr]
    assert [v.tag for v in ET.fromstring(twiml.hangup("Bye."))] == ["Say", "Hangup"]
