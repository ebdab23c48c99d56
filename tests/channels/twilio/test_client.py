"""The real Twilio SDK, through client.py, against the sandbox on a loopback port."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from twilio.base.exceptions import TwilioRestException

from channels.twilio.client import TwilioClient
from channels.twilio.errors import ApiError, Outcome, TransportError
from channels.twilio.parse import event_from_message, parse_status_callback
from channels.twilio.sandbox import Sandbox, serve
from config.settings import Settings
from tests.channels.twilio.conftest import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CUSTOMER,
    OUR_NUMBER,
    Hub,
    Peer,
    fixture_form,
)

STATUS_PATH = "/webhooks/twilio/sms/status"


async def test_create_fetch_list(twilio: TwilioClient, sandbox: Sandbox) -> None:
    created = await twilio.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body="Your visit is at 10:00")
    assert created.sid.startswith("SM") and len(created.sid) == 34
    assert created.status == "queued"
    assert created.direction == "outbound-api"
    assert (created.from_, created.to, created.num_segments) == (OUR_NUMBER, CUSTOMER, 1)
    assert created.date_created is not None and created.date_created.tzinfo is not None

    await sandbox.settle()
    fetched = await twilio.fetch_message(created.sid)
    assert (fetched.sid, fetched.status, fetched.body) == (
        created.sid,
        "delivered",
        "Your visit is at 10:00",
    )
    assert fetched.date_sent is not None

    listed = await twilio.list_messages(sent_after=datetime.now(UTC) - timedelta(minutes=5))
    assert [m.sid for m in listed] == [created.sid]
    assert await twilio.list_messages(sent_before=datetime.now(UTC) - timedelta(days=2)) == []


async def test_list_follows_twilios_pages_newest_first(
    twilio: TwilioClient, sandbox: Sandbox
) -> None:
    sids = [
        (await twilio.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body=f"n{i}")).sid for i in range(5)
    ]
    await twilio.send_sms(from_=OUR_NUMBER, to="+14155550111", body="someone else")
    listed = await twilio.list_messages(to=CUSTOMER, page_size=2)
    assert [m.sid for m in listed] == sids[::-1]
    assert len(await twilio.list_messages(limit=3, page_size=2)) == 3


async def test_mms_with_media_through_a_client_from_settings(peer: Peer) -> None:
    settings = Settings(
        twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN, twilio_api_base=peer.url
    )
    media = ["https://example.com/a.jpg", "https://example.com/b.png"]
    async with TwilioClient.from_settings(settings) as twilio:
        created = await twilio.send_sms(from_=OUR_NUMBER, to=CUSTOMER, media_urls=media)
    assert created.sid.startswith("MM") and created.num_media == 2
    assert AUTH_TOKEN not in repr(twilio)
    with pytest.raises(ValueError, match="TWILIO_ACCOUNT_SID"):
        TwilioClient.from_settings(Settings())


async def test_senders_outside_the_account_are_refused(
    twilio: TwilioClient, sandbox: Sandbox
) -> None:
    sandbox.numbers = {OUR_NUMBER}
    with pytest.raises(ApiError) as caught:
        await twilio.send_sms(from_="+14155550198", to=CUSTOMER, body="x")
    assert (caught.value.code, caught.value.outcome) == (21606, Outcome.PERMANENT)
    assert "+1415" not in str(caught.value)


async def test_opted_out_number_surfaces_21610(twilio: TwilioClient, sandbox: Sandbox) -> None:
    sandbox.opt_out(CUSTOMER, OUR_NUMBER)
    with pytest.raises(ApiError) as caught:
        await twilio.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body="Reminder")
    error = caught.value
    assert (error.code, error.http_status, error.outcome) == (21610, 400, Outcome.OPTED_OUT)
    assert error.more_info == "https://www.twilio.com/docs/errors/21610"
    assert isinstance(error.__cause__, TwilioRestException)
    # Twilio blocks only the pair that was texted; our other numbers are the hub's job.
    other = await twilio.send_sms(from_="+14155550198", to=CUSTOMER, body="Reminder")
    assert other.status == "queued"
    sandbox.opt_in(CUSTOMER)
    assert (await twilio.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body="Hi")).status == "queued"


@pytest.mark.parametrize(
    ("http_status", "code", "outcome"),
    [(429, 20429, Outcome.BACK_OFF), (503, 20503, Outcome.UNKNOWN)],
)
async def test_injected_failures(
    twilio: TwilioClient, sandbox: Sandbox, http_status: int, code: int, outcome: Outcome
) -> None:
    sandbox.fail_next_create(http_status, code)
    with pytest.raises(ApiError) as caught:
        await twilio.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body="x")
    assert (caught.value.code, caught.value.http_status) == (code, http_status)
    assert caught.value.outcome is outcome
    assert sandbox.messages == {}


async def test_unknown_outcome_is_settled_by_a_lookup(
    twilio: TwilioClient, sandbox: Sandbox
) -> None:
    sandbox.fail_next_create(500, 20500, after_accept=True)
    with pytest.raises(ApiError) as caught:
        await twilio.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body="Lost answer")
    assert caught.value.outcome is Outcome.UNKNOWN
    await sandbox.settle()
    found = await twilio.list_messages(from_=OUR_NUMBER, to=CUSTOMER)
    assert len(found) == 1 and found[0].status == "delivered"


async def test_unknown_sid_and_bad_credentials(peer: Peer, twilio: TwilioClient) -> None:
    with pytest.raises(ApiError) as caught:
        await twilio.fetch_message("SM" + "0" * 32)
    assert (caught.value.code, caught.value.http_status) == (20404, 404)
    async with TwilioClient(ACCOUNT_SID, "wrong-token", peer.url) as wrong:
        with pytest.raises(ApiError) as caught:
            await wrong.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body="x")
    assert (caught.value.code, caught.value.http_status) == (20003, 401)
    async with TwilioClient(ACCOUNT_SID, "wrong-token", peer.url) as wrong:
        with pytest.raises(ApiError) as caught:
            await wrong.list_messages()
    assert (caught.value.code, caught.value.http_status) == (20003, 401)


async def test_no_answer_is_a_transport_error(hub: Hub) -> None:
    async with serve(hub.app()) as url:
        pass  # the port is closed again
    async with TwilioClient(ACCOUNT_SID, AUTH_TOKEN, url, timeout=2) as client:
        with pytest.raises(TransportError) as caught:
            await client.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body="x")
    assert caught.value.outcome is Outcome.UNKNOWN


async def test_signed_callbacks_in_the_documented_order(
    twilio: TwilioClient, sandbox: Sandbox, hub: Hub
) -> None:
    callback = hub.public_url + STATUS_PATH
    created = await twilio.send_sms(
        from_=OUR_NUMBER, to=CUSTOMER, body="x", status_callback=callback
    )
    await sandbox.settle()
    received = hub.at(STATUS_PATH)
    assert [r.get("MessageStatus") for r in received] == ["sent", "delivered"]
    assert all(r.signature_valid for r in received)
    events = [parse_status_callback(r.form)[0] for r in received]
    assert {e.external_id for e in events} == {created.sid}
    assert [e.status for e in events] == ["sent", "delivered"]
    # Field sets as Twilio sends them, i.e. as the recorded fixtures.
    assert {k for k, _ in received[0].form} == {k for k, _ in fixture_form("status_sent.txt")}
    assert {k for k, _ in received[1].form} == {k for k, _ in fixture_form("status_delivered.txt")}


async def test_unknown_handset_number_ends_undelivered_30005(
    twilio: TwilioClient, sandbox: Sandbox, hub: Hub
) -> None:
    to = "+14155550005"
    await twilio.send_sms(
        from_=OUR_NUMBER, to=to, body="x", status_callback=hub.public_url + STATUS_PATH
    )
    await sandbox.settle()
    received = hub.at(STATUS_PATH)
    assert [(r.get("MessageStatus"), r.get("ErrorCode")) for r in received] == [
        ("sent", None),
        ("undelivered", "30005"),
    ]
    assert all(r.signature_valid for r in received)
    assert {k for k, _ in received[1].form} == {
        k for k, _ in fixture_form("status_undelivered_30005.txt")
    }
    [event] = parse_status_callback(received[1].form)
    assert event.data["ErrorCode"] == 30005


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("+14155550003", [("sent", None), ("undelivered", "30003")]),
        ("+14155550007", [("sent", None), ("undelivered", "30007")]),
        ("+14155550001", [("failed", "30001")]),
    ],
)
async def test_other_test_numbers(
    twilio: TwilioClient,
    sandbox: Sandbox,
    hub: Hub,
    to: str,
    expected: list[tuple[str, str | None]],
) -> None:
    created = await twilio.send_sms(
        from_=OUR_NUMBER, to=to, body="x", status_callback=hub.public_url + STATUS_PATH
    )
    await sandbox.settle()
    got = [(r.get("MessageStatus"), r.get("ErrorCode")) for r in hub.at(STATUS_PATH)]
    assert got == expected
    fetched = await twilio.fetch_message(created.sid)
    assert fetched.error_code == int(expected[-1][1] or 0)


async def test_out_of_order_and_dropped_callbacks(
    twilio: TwilioClient, sandbox: Sandbox, hub: Hub
) -> None:
    callback = hub.public_url + STATUS_PATH
    sandbox.out_of_order = True
    await twilio.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body="x", status_callback=callback)
    await sandbox.settle()
    assert [r.get("MessageStatus") for r in hub.at(STATUS_PATH)] == ["delivered", "sent"]

    hub.received.clear()
    sandbox.out_of_order = False
    sandbox.drop_statuses = {"delivered"}
    lost = await twilio.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body="y", status_callback=callback)
    await sandbox.settle()
    assert [r.get("MessageStatus") for r in hub.at(STATUS_PATH)] == ["sent"]
    # Reconciliation repairs the callback that never came.
    repaired = event_from_message(await twilio.fetch_message(lost.sid))
    assert (repaired.external_id, repaired.status, repaired.update_only) == (
        lost.sid,
        "delivered",
        True,
    )


async def test_calls_create_fetch_and_callbacks(
    twilio: TwilioClient, sandbox: Sandbox, hub: Hub
) -> None:
    call = await twilio.start_call(
        from_=OUR_NUMBER,
        to=CUSTOMER,
        url="https://hub.example.com/webhooks/twilio/voice",
        status_callback=hub.public_url + "/webhooks/twilio/voice/status",
        status_callback_events=["initiated", "ringing", "answered", "completed"],
    )
    assert call.sid.startswith("CA") and call.status == "queued"
    await sandbox.settle()
    fetched = await twilio.fetch_call(call.sid)
    assert (fetched.status, fetched.duration) == ("completed", sandbox.call_duration)
    received = hub.at("/webhooks/twilio/voice/status")
    assert [r.get("CallStatus") for r in received] == [
        "initiated",
        "ringing",
        "in-progress",
        "completed",
    ]
    assert all(r.signature_valid for r in received)
    assert received[-1].get("CallDuration") == str(sandbox.call_duration)
    with pytest.raises(ApiError) as caught:
        await twilio.start_call(from_=OUR_NUMBER, to=CUSTOMER, url="")
    assert caught.value.code == 21205


async def test_calls_are_listed_newest_first_by_number_and_parent(
    twilio: TwilioClient, sandbox: Sandbox
) -> None:
    url = "https://hub.example.com/webhooks/twilio/voice"
    first = await twilio.start_call(from_=OUR_NUMBER, to=CUSTOMER, url=url)
    second = await twilio.start_call(from_=OUR_NUMBER, to="+14155550177", url=url)
    await sandbox.settle()
    listed = await twilio.list_calls(from_=OUR_NUMBER, page_size=1)
    assert [c.sid for c in listed] == [second.sid, first.sid]
    assert {c.direction for c in listed} == {"outbound-api"}
    [only] = await twilio.list_calls(to=CUSTOMER)
    assert (only.sid, only.to, only.from_) == (first.sid, CUSTOMER, OUR_NUMBER)
    assert only.date_created is not None and only.status == "completed"
    assert await twilio.list_calls(parent_sid=first.sid) == []
    assert await twilio.list_calls(from_="+14155550000") == []


async def test_phone_numbers_are_not_logged_above_debug(
    twilio: TwilioClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await twilio.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body="secret body")
    await twilio.list_messages(to=CUSTOMER)
    # uvicorn.access is the sandbox's own server, standing in for Twilio's side.
    ours = [r for r in caplog.records if not r.name.startswith("uvicorn")]
    loud = [r.getMessage() for r in ours if r.levelno > logging.DEBUG]
    assert any(created.sid in line for line in loud)
    assert not [line for line in loud if "+1415" in line or "%2B1415" in line or "secret" in line]
    assert any("%2B1415" in r.getMessage() for r in ours)  # the SDK's own log, at DEBUG
