"""Pure parsing of recorded Twilio payloads, consent keywords and malformed input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.twilio.errors import Outcome, PayloadError, classify
from channels.twilio.parse import (
    consent_keyword,
    event_from_message,
    parse_inbound_sms,
    parse_status_callback,
    thread_key,
)
from channels.twilio.records import MessageRecord
from tests.channels.twilio.conftest import fixture_form
from timeline.events import Channel, Direction, IdentityKind, Kind

AT = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)


def test_inbound_sms() -> None:
    [event] = parse_inbound_sms(fixture_form("inbound_sms.txt"), received_at=AT)
    assert (event.channel, event.kind, event.direction) == (
        Channel.SMS,
        Kind.MESSAGE,
        Direction.INBOUND,
    )
    assert event.external_id == "SM8b2f6c1d0e9a4b3c7d5e1f2a3b4c5d6e"
    assert event.status == "received"
    assert event.text == "Hi, can we move my appointment to Friday?"
    assert event.sender is not None and event.sender.kind is IdentityKind.PHONE
    assert event.sender.value == "+14155550100"
    assert event.recipient is not None and event.recipient.value == "+14155550199"
    assert event.counterpart == event.sender
    assert event.occurred_at == AT
    assert event.attachments == ()
    assert event.thread_key == thread_key("+14155550199", "+14155550100")
    assert not event.update_only
    assert event.data == {
        "AccountSid": "AC3f1c2e8d9b7a4c6e5f0a1b2c3d4e5f6a",
        "FromCountry": "US",
        "FromState": "CA",
        "FromCity": "SAN FRANCISCO",
        "FromZip": "94105",
        "ToCountry": "US",
        "ToState": "CA",
        "ToCity": "SAN FRANCISCO",
        "ToZip": "94103",
        "NumMedia": 0,
        "NumSegments": 1,
    }


def test_inbound_mms_with_two_media() -> None:
    [event] = parse_inbound_sms(fixture_form("inbound_mms_2_media.txt"))
    assert event.external_id == "MM4e7a9c2b1d3f5e6a8b0c1d2e3f4a5b6c"
    assert event.text == "Photos of the damage"
    media = "https://api.twilio.com/2010-04-01/Accounts/AC3f1c2e8d9b7a4c6e5f0a1b2c3d4e5f6a/Messages/MM4e7a9c2b1d3f5e6a8b0c1d2e3f4a5b6c/Media/"
    assert [(a.url, a.content_type, a.filename, a.content) for a in event.attachments] == [
        (
            media + "ME2c4e6a8b0d1f3a5c7e9b1d3f5a7c9e1b",
            "image/jpeg",
            "ME2c4e6a8b0d1f3a5c7e9b1d3f5a7c9e1b.jpg",
            None,
        ),
        (
            media + "ME7d9f1b3e5a7c9d1f3b5e7a9c1d3f5b7e",
            "image/png",
            "ME7d9f1b3e5a7c9d1f3b5e7a9c1d3f5b7e.png",
            None,
        ),
    ]
    assert event.data["NumMedia"] == 2
    assert event.data["MessagingServiceSid"] == "MG9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
    assert event.occurred_at.tzinfo is not None
    assert abs(event.occurred_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_inbound_stop_is_marked_as_an_opt_out() -> None:
    [event] = parse_inbound_sms(fixture_form("inbound_stop.txt"))
    assert event.text == " Stop "
    assert event.data["consent"] == "opt_out"


def test_no_consent_marker_on_an_ordinary_text() -> None:
    [event] = parse_inbound_sms(fixture_form("inbound_sms.txt"))
    assert "consent" not in event.data


@pytest.mark.parametrize(
    ("fixture", "sid", "status", "error_code", "outcome"),
    [
        ("status_sent.txt", "SM0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d", "sent", None, None),
        ("status_delivered.txt", "SM0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d", "delivered", None, None),
        (
            "status_undelivered_30005.txt",
            "SM5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b",
            "undelivered",
            30005,
            Outcome.PERMANENT,
        ),
        (
            "status_failed_21610.txt",
            "SM1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d",
            "failed",
            21610,
            Outcome.OPTED_OUT,
        ),
    ],
)
def test_status_callbacks(
    fixture: str, sid: str, status: str, error_code: int | None, outcome: Outcome | None
) -> None:
    [event] = parse_status_callback(fixture_form(fixture), received_at=AT)
    assert event.update_only
    assert (event.channel, event.kind, event.direction) == (
        Channel.SMS,
        Kind.MESSAGE,
        Direction.OUTBOUND,
    )
    assert event.external_id == sid
    assert event.status == status
    assert event.occurred_at == AT
    assert event.sender is not None and event.sender.value == "+14155550199"
    assert event.counterpart == event.recipient
    assert event.data.get("ErrorCode") == error_code
    if outcome is not None:
        assert classify(event.data["ErrorCode"], None) is outcome
    assert event.text is None


def test_status_delivered_keeps_the_carrier_done_date() -> None:
    [event] = parse_status_callback(fixture_form("status_delivered.txt"))
    assert event.data["RawDlrDoneDate"] == "2611221015"


def test_status_from_sms_status_alone() -> None:
    form = [("MessageSid", "SM1"), ("SmsStatus", "Delivered"), ("ErrorMessage", "")]
    [event] = parse_status_callback(form)
    assert event.status == "delivered"
    assert event.sender is None and event.data == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("STOP", "opt_out"),
        ("stop", "opt_out"),
        (" Stop ", "opt_out"),
        ("\tSTOPALL\n", "opt_out"),
        ("unsubscribe", "opt_out"),
        ("Cancel", "opt_out"),
        ("END", "opt_out"),
        ("quit", "opt_out"),
        ("REVOKE", "opt_out"),
        ("OptOut", "opt_out"),
        ("START", "opt_in"),
        ("unstop", "opt_in"),
        ("Yes", "opt_in"),
        ("HELP", "help"),
        ("info", "help"),
        ("STOP PLEASE", None),
        ("please stop", None),
        ("STOPP", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_consent_keyword(text: str | None, expected: str | None) -> None:
    assert consent_keyword(text) == expected


def _inbound(**changes: str | None) -> list[tuple[str, str]]:
    form = dict(fixture_form("inbound_mms_2_media.txt"))
    for key, value in changes.items():
        if value is None:
            form.pop(key, None)
        else:
            form[key] = value
    return list(form.items())


@pytest.mark.parametrize(
    ("form", "field"),
    [
        pytest.param(_inbound(From=None), "From", id="missing-From"),
        pytest.param(_inbound(From=""), "From", id="empty-From"),
        pytest.param(_inbound(From="whatsapp:+14155550100"), "From", id="whatsapp-From"),
        pytest.param(_inbound(To=None), "To", id="missing-To"),
        pytest.param(_inbound(MessageSid=None), "MessageSid", id="missing-MessageSid"),
        pytest.param(_inbound(MessageSid="SM 1"), "MessageSid", id="bad-MessageSid"),
        pytest.param(_inbound(NumMedia="two"), "NumMedia", id="non-numeric-NumMedia"),
        pytest.param(_inbound(NumMedia="-1"), "NumMedia", id="negative-NumMedia"),
        pytest.param(_inbound(NumMedia="\uff13"), "NumMedia", id="non-ascii-NumMedia"),
        pytest.param(_inbound(NumMedia="3"), "MediaUrl2", id="NumMedia-above-media"),
        pytest.param(_inbound(NumMedia="11"), "NumMedia", id="NumMedia-above-10"),
        pytest.param(_inbound(MediaUrl1=None), "MediaUrl1", id="missing-MediaUrl1"),
        pytest.param(_inbound(MediaUrl0="file:///etc/passwd"), "MediaUrl0", id="non-http-media"),
        pytest.param(_inbound(NumSegments="1.5"), "NumSegments", id="bad-NumSegments"),
        pytest.param([], "MessageSid", id="empty-form"),
    ],
)
def test_malformed_inbound_raises_payload_error(form: list[tuple[str, str]], field: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_inbound_sms(form)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert "+1415" not in str(caught.value)


@pytest.mark.parametrize(
    ("form", "field"),
    [
        pytest.param([("MessageStatus", "sent")], "MessageSid", id="missing-MessageSid"),
        pytest.param([("MessageSid", "SM1")], "MessageStatus", id="missing-status"),
        pytest.param(
            [("MessageSid", "SM1"), ("MessageStatus", "sent!")], "MessageStatus", id="bad-status"
        ),
        pytest.param(
            [("MessageSid", "SM1"), ("MessageStatus", "failed"), ("ErrorCode", "x1")],
            "ErrorCode",
            id="bad-ErrorCode",
        ),
    ],
)
def test_malformed_status_raises_payload_error(form: list[tuple[str, str]], field: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_status_callback(form)
    assert caught.value.field == field


_KEYS = st.sampled_from(
    [
        "MessageSid",
        "From",
        "To",
        "Body",
        "NumMedia",
        "MediaUrl0",
        "MediaContentType0",
        "NumSegments",
        "MessageStatus",
        "SmsStatus",
        "ErrorCode",
        "Other",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_KEYS, st.text(max_size=12)), max_size=12))
def test_any_form_parses_or_raises_payload_error_only(form: list[tuple[str, str]]) -> None:
    for parser in (parse_inbound_sms, parse_status_callback):
        try:
            events = parser(form)
        except PayloadError:
            continue
        assert len(events) == 1


def test_event_from_an_inbound_record_is_a_full_event() -> None:
    record = MessageRecord(
        sid="SMabc",
        status="received",
        direction="inbound",
        from_="+14155550100",
        to="+14155550199",
        body="hello",
        num_segments=1,
        num_media=0,
        date_sent=AT,
    )
    event = event_from_message(record)
    assert not event.update_only
    assert event.direction is Direction.INBOUND
    assert (event.text, event.occurred_at, event.status) == ("hello", AT, "received")
    assert event.thread_key == thread_key("+14155550199", "+14155550100")
    assert "hello" not in repr(record) and "+1415" not in repr(record)


def test_event_from_an_outbound_record_is_a_status_update() -> None:
    record = MessageRecord(
        sid="SMdef",
        status="undelivered",
        direction="outbound-api",
        from_="+14155550199",
        to="+14155550005",
        body="Your appointment is tomorrow",
        error_code=30005,
        date_created=AT,
    )
    event = event_from_message(record)
    assert event.update_only and event.direction is Direction.OUTBOUND
    assert event.text is None
    assert event.data == {"ErrorCode": 30005}
    assert event.occurred_at == AT
    assert event.counterpart is not None and event.counterpart.value == "+14155550005"
