"""The sandbox as a customer's phone: signed inbound texts, replies, STOP, HTTP handles."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from channels.twilio.client import TwilioClient
from channels.twilio.errors import ApiError
from channels.twilio.parse import parse_inbound_sms
from channels.twilio.sandbox import Sandbox, create_app, run_sandbox
from tests.channels.twilio.conftest import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CUSTOMER,
    FIXTURES,
    OTHER_NUMBER,
    OUR_NUMBER,
    Hub,
    Peer,
    fixture_form,
)
from timeline.events import Identity, IdentityKind

SMS_PATH = "/webhooks/twilio/sms"


async def test_text_the_hub_posts_twilios_signed_form(sandbox: Sandbox, hub: Hub) -> None:
    result = await sandbox.text_hub(CUSTOMER, OUR_NUMBER, "Can we move my appointment?")
    assert result.status_code == 200
    [received] = hub.at(SMS_PATH)
    assert received.signature_valid
    assert {k for k, _ in received.form} == {k for k, _ in fixture_form("inbound_sms.txt")}
    [event] = parse_inbound_sms(received.form)
    assert event.external_id == result.sid
    assert event.sender == Identity(IdentityKind.PHONE, CUSTOMER)
    assert event.recipient == Identity(IdentityKind.PHONE, OUR_NUMBER)
    assert event.text == "Can we move my appointment?"
    assert event.data["FromCountry"] == "US"


async def test_mms_from_a_phone_carries_its_media(sandbox: Sandbox, hub: Hub) -> None:
    media = ["https://example.com/photo.jpg", "https://example.com/scan.png"]
    result = await sandbox.text_hub(CUSTOMER, OUR_NUMBER, "", media)
    assert result.sid.startswith("MM")
    [event] = parse_inbound_sms(hub.at(SMS_PATH)[0].form)
    assert [(a.url, a.content_type) for a in event.attachments] == [
        ("https://example.com/photo.jpg", "image/jpeg"),
        ("https://example.com/scan.png", "image/png"),
    ]
    assert event.text is None


async def test_twiml_replies_reach_the_phone(sandbox: Sandbox, hub: Hub) -> None:
    hub.reply = "<Response><Message>Thanks, we will call you.</Message></Response>"
    await sandbox.text_hub(CUSTOMER, OUR_NUMBER, "Hello")
    log = sandbox.phone_log(CUSTOMER)
    assert [(m["direction"], m["body"]) for m in log] == [
        ("inbound", "Hello"),
        ("outbound-reply", "Thanks, we will call you."),
    ]


async def test_stop_blocks_only_that_pair_and_start_lifts_it(
    sandbox: Sandbox, twilio: TwilioClient
) -> None:
    await sandbox.text_hub(CUSTOMER, OUR_NUMBER, " Stop ")
    assert "unsubscribed" in sandbox.phone_log(CUSTOMER)[-1]["body"]
    with pytest.raises(ApiError) as caught:
        await twilio.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body="Reminder")
    assert caught.value.code == 21610
    await twilio.send_sms(from_=OTHER_NUMBER, to=CUSTOMER, body="Reminder")
    await sandbox.text_hub(CUSTOMER, OUR_NUMBER, "STOP PLEASE")
    await sandbox.text_hub(CUSTOMER, OUR_NUMBER, "start")
    sent = await twilio.send_sms(from_=OUR_NUMBER, to=CUSTOMER, body="Welcome back")
    assert sent.status == "queued"


async def test_http_handles_for_people_and_tests(peer: Peer, hub: Hub) -> None:
    async with httpx.AsyncClient(base_url=peer.url) as http:
        answer = await http.post(
            "/sandbox/sms", json={"from": CUSTOMER, "to": OUR_NUMBER, "body": "Hi there"}
        )
        assert answer.status_code == 200
        assert answer.json()["hub_status"] == 200
        assert hub.at(SMS_PATH)[0].signature_valid
        bad = await http.post("/sandbox/sms", json={"from": "0100", "to": OUR_NUMBER})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_from"

        assert (await http.post("/sandbox/opt-outs", json={"number": CUSTOMER})).status_code == 204
        async with TwilioClient(ACCOUNT_SID, AUTH_TOKEN, peer.url) as twilio:
            with pytest.raises(ApiError) as caught:
                await twilio.send_sms(from_=OTHER_NUMBER, to=CUSTOMER, body="x")
            assert caught.value.code == 21610
            assert (await http.delete(f"/sandbox/opt-outs/{CUSTOMER}")).status_code == 204
            sent = await twilio.send_sms(from_=OTHER_NUMBER, to=CUSTOMER, body="Your code")

        phone = (await http.get(f"/sandbox/phones/{CUSTOMER}/messages")).json()["messages"]
        assert [(m["direction"], m["body"]) for m in phone] == [
            ("inbound", "Hi there"),
            ("outbound-api", "Your code"),
        ]
        assert phone[-1]["sid"] == sent.sid


async def test_rest_api_requires_basic_auth(peer: Peer) -> None:
    path = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    async with httpx.AsyncClient(base_url=peer.url) as http:
        anonymous = await http.get(path)
        other_account = await http.get(
            path.replace(ACCOUNT_SID, "AC" + "f" * 32), auth=(ACCOUNT_SID, AUTH_TOKEN)
        )
        missing_to = await http.post(
            path, data={"From": OUR_NUMBER}, auth=(ACCOUNT_SID, AUTH_TOKEN)
        )
    assert anonymous.status_code == 401
    assert anonymous.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert other_account.status_code == 404 and other_account.json()["code"] == 20404
    assert missing_to.status_code == 400 and missing_to.json()["code"] == 21604


async def test_signatures_use_the_hubs_public_url_behind_a_proxy(hub: Hub) -> None:
    hub.public_url = "https://hub.example.com"
    app = create_app(ACCOUNT_SID, AUTH_TOKEN, hub.internal_url, signing_url=hub.public_url)
    box: Sandbox = app.state.sandbox
    async with run_sandbox(box):
        await box.text_hub(CUSTOMER, OUR_NUMBER, "via the proxy")
    [received] = hub.at(SMS_PATH)
    assert received.signature_valid
    assert not received.valid_for_internal_url


def test_every_fixture_is_used_by_a_test() -> None:
    sources = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    unused = [p.name for p in FIXTURES.iterdir() if p.name not in sources]
    assert unused == []
