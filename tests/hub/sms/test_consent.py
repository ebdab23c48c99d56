"""Opt-out keywords through the hub (RELIABILITY.md, Twilio 6).

Twilio itself blocks only the pair of numbers a STOP was texted to; the hub must stop
every one of our numbers, refuse agents' sends (409 with the reason) and skip automated
messages that were queued before the STOP, recording why.
"""

from __future__ import annotations

from typing import Any

import pytest

from hub.sms_outbound import queue_sms
from tests.hub.sms.conftest import CUSTOMER, OTHER_NUMBER, OUR_NUMBER, SmsHub, StartHub
from timeline.schema import events


async def queue_automated(hub: SmsHub, customer_id: str, text: str, **more: Any) -> str:
    """An automated message (a reminder) queued the way the hub's jobs queue them."""
    async with hub.db.write() as conn:
        stored = await queue_sms(
            conn, hub.settings, customer_id=customer_id, text=text, automated=True, **more
        )
    return stored.id


async def consent_events(hub: SmsHub, customer_id: str) -> list[dict[str, Any]]:
    timeline = await hub.timeline(customer_id)
    return [e for e in reversed(timeline) if e["kind"] == "consent"]


async def consent_state(hub: SmsHub, customer_id: str) -> dict[str, str]:
    response = await hub.http.get(f"/api/v1/customers/{customer_id}")
    assert response.status_code == 200
    return {c["purpose"]: c["state"] for c in response.json()["consent"] if c["channel"] == "sms"}


async def test_6_stop_opts_out_on_all_our_numbers(hub: SmsHub) -> None:
    for i, keyword in enumerate(["STOP", "stop", " Stop "]):
        await stop_on_all_numbers(hub, f"+1415555{1000 + i:04d}", keyword)


async def stop_on_all_numbers(hub: SmsHub, phone: str, keyword: str) -> None:
    """The customer at ``phone`` texts ``keyword`` to one of our numbers."""
    # The customer has talked to both of our numbers; an automated reminder waits on each.
    assert (await hub.sandbox.text_hub(phone, OTHER_NUMBER, "hi")).status_code == 200
    customer_id = await hub.customer_for(phone)
    from_other = await queue_automated(hub, customer_id, "Reminder: Thursday 10:00")
    assert (await hub.sandbox.text_hub(phone, OUR_NUMBER, "hello")).status_code == 200
    from_ours = await queue_automated(hub, customer_id, "Reminder: bring your card")
    by_agent = await hub.send(customer_id, "An agent's answer, queued before the STOP")
    assert by_agent.status_code == 202
    queued = {from_other: OTHER_NUMBER, from_ours: OUR_NUMBER, by_agent.json()["id"]: OUR_NUMBER}
    for event_id, number in queued.items():
        [row] = await hub.outbox_rows(event_id)
        assert row["payload"]["from"] == number

    # STOP to one number: stored, answered, a consent event for every purpose.
    stop = await hub.sandbox.text_hub(phone, OUR_NUMBER, keyword)
    assert stop.status_code == 200
    [opt_out] = await consent_events(hub, customer_id)
    assert opt_out["status"] == "opted_out"
    assert opt_out["data"]["purposes"] == ["transactional", "marketing"]
    assert opt_out["data"]["cause"] == "keyword STOP"
    assert opt_out["data"]["state"] == "opted_out"
    assert await consent_state(hub, customer_id) == {
        "transactional": "opted_out",
        "marketing": "opted_out",
    }
    # Twilio blocks only that pair; the other number is the hub's job.
    assert hub.sandbox.is_opted_out(phone, OUR_NUMBER)
    assert not hub.sandbox.is_opted_out(phone, OTHER_NUMBER)

    # What was queued before the STOP is skipped at send time, with the reason.
    assert await hub.sender().run_once() == 3
    for event_id in queued:
        event = await hub.event(event_id)
        assert event["status"] == "skipped"
        assert event["data"]["skip_reason"] == "opted out"
        [row] = await hub.outbox_rows(event_id)
        assert row["state"] == "skipped"
        assert "opted out" in row["last_error"]
    assert hub.outbound_at_sandbox() == []
    assert await hub.sender().run_once() == 0, keyword

    # New sends are refused from either number (409 with the reason), for any purpose.
    refused = await hub.send(customer_id, "Are you there?")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "opted_out"
    assert "opted out" in error["message"]
    # The customer writes to the other number: a reply would now go from there.
    assert (await hub.sandbox.text_hub(phone, OTHER_NUMBER, "why so quiet?")).status_code == 200
    for purpose in ("transactional", "marketing"):
        refused = await hub.send(customer_id, "Are you there?", purpose=purpose)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "opted_out"
    # ... and automated sends too, whichever number they would go from.
    with pytest.raises(Exception, match="opted out"):
        await queue_automated(hub, customer_id, "Reminder")
    outbound = await hub.count(
        events, events.c.customer_id == customer_id, events.c.direction == "outbound"
    )
    assert outbound == 3
    assert hub.outbound_at_sandbox() == []


async def test_6_stop_please_is_a_message_and_start_opts_back_in(hub: SmsHub) -> None:
    please = await hub.sandbox.text_hub(CUSTOMER, OUR_NUMBER, "STOP PLEASE")
    assert please.status_code == 200
    customer_id = await hub.customer_for(CUSTOMER)
    assert await consent_events(hub, customer_id) == []
    assert await consent_state(hub, customer_id) == {}
    assert (await hub.send(customer_id, "Sorry, stop what?")).status_code == 202

    await hub.sandbox.text_hub(CUSTOMER, OUR_NUMBER, "Stop")
    assert (await hub.send(customer_id, "x")).status_code == 409

    start = await hub.sandbox.text_hub(CUSTOMER, OUR_NUMBER, "start")
    assert start.status_code == 200
    assert await consent_state(hub, customer_id) == {
        "transactional": "opted_in",
        "marketing": "opted_in",
    }
    back = await hub.send(customer_id, "Welcome back")
    assert back.status_code == 202, back.text

    changes = await consent_events(hub, customer_id)
    assert [(e["status"], e["data"]["cause"]) for e in changes] == [
        ("opted_out", "keyword STOP"),
        ("opted_in", "keyword START"),
    ]
    assert all(e["data"]["purposes"] == ["transactional", "marketing"] for e in changes)
    # Both queued messages are sent: consent is checked again at send time, and it is back.
    assert await hub.sender().run_once() == 2
    assert [m["body"] for m in hub.outbound_at_sandbox()] == ["Sorry, stop what?", "Welcome back"]
    # The STOP, STOP PLEASE and START texts are on the timeline as messages too.
    texts = [e["text"] for e in await hub.timeline(customer_id) if e["kind"] == "message"]
    assert {"STOP PLEASE", "Stop", "start"} <= set(texts)


async def test_6_every_opt_out_keyword_and_nothing_else(hub: SmsHub) -> None:
    words = {
        "STOPALL": "opted_out",
        "unsubscribe": "opted_out",
        "Cancel": "opted_out",
        "END": "opted_out",
        "quit": "opted_out",
        "REVOKE": "opted_out",
        "optout": "opted_out",
        "please stop": None,
        "STOP!": None,
        "stop stop": None,
        "": None,
    }
    for i, (word, expected) in enumerate(words.items()):
        phone = f"+1415555{3000 + i:04d}"
        await hub.inbound(f"SM{i:032x}", word, from_=phone)
        customer_id = await hub.customer_for(phone)
        state = await consent_state(hub, customer_id)
        assert state.get("transactional") == expected, word


async def test_6_help_is_answered_with_the_configured_text(start_hub: StartHub) -> None:
    text = "Acme Dental: call +1 415 555 0100, Mon-Fri 9-17. Reply STOP to opt out."
    async with start_hub(help_text=text) as hub:
        for i, word in enumerate(["HELP", " help ", "Info"]):
            phone = f"+1415555{1100 + i:04d}"
            answer = await hub.sandbox.text_hub(phone, OUR_NUMBER, word)
            assert answer.status_code == 200
            assert f"<Message>{text}</Message>" in answer.response_text, word
            replies = [m["body"] for m in hub.sandbox.phone_log(phone) if m["from"] == OUR_NUMBER]
            assert text in replies
            customer_id = await hub.customer_for(phone)
            assert await consent_events(hub, customer_id) == []
            [message] = await hub.timeline(customer_id)
            assert message["text"] == word
            # Twilio retrying the same webhook gets no second answer text.
            again = await hub.post_signed(
                "/webhooks/twilio/sms",
                [
                    ("MessageSid", answer.sid),
                    ("From", phone),
                    ("To", OUR_NUMBER),
                    ("Body", word),
                    ("NumMedia", "0"),
                ],
            )
            assert again.status_code == 200
            assert "<Message>" not in again.text
