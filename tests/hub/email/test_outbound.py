"""Mail out: ``POST /api/v1/messages`` (channel email) through the outbox to aiosmtpd.

The hub makes the Message-ID when it queues the message and stores it before any SMTP
DATA (RELIABILITY 17); ``EmailSender`` composes the message at send time (text + HTML,
attachments from stored documents, threading headers for a reply) and sends it over
STARTTLS with AUTH. Server answers decide the outbox row: 4xx retries later, 5xx fails
with the server's reason on the event.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

import pytest
import sqlalchemy as sa

from channels.email.mime import message_ids
from hub.email_sender import EmailSender
from tests.hub.email.conftest import OUR_ADDRESS, MailHub, mail, wait_for
from timeline.events import utcnow
from timeline.schema import outbox

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")

MESSAGE_ID = re.compile(r"^<[^<>@\s]+@commhub\.example>$")
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def _parse(raw: bytes) -> EmailMessage:
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    return parsed


async def _inbound(hub: MailHub, raw: bytes, message_id: str) -> dict[str, Any]:
    hub.dovecot.append(raw)
    await hub.sync()
    return await hub.event(message_id)


async def test_queued_with_message_id_then_sent_over_starttls_with_auth(
    mail_hub: MailHub,
) -> None:
    address = "jane.doe@example.org"
    customer = await mail_hub.create_customer(address, "Jane Doe")
    document = await mail_hub.upload(customer, "invoice-0815.pdf", PDF, "application/pdf")

    response = await mail_hub.send(
        customer,
        subject="Your invoice \u2013 May",
        text="Please find the invoice attached. Gr\u00fc\u00dfe",
        html="<p>Please find the <b>invoice</b> attached.</p>",
        attachments=[document],
    )
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["status"] == "queued"
    assert MESSAGE_ID.match(queued["external_id"]), queued["external_id"]
    assert (queued["from"], queued["to"]) == (OUR_ADDRESS, address)

    # Stored before anything was sent: the event row and the outbox row hold the id.
    row = await mail_hub.event(queued["external_id"])
    assert row["id"] == queued["id"] and row["status"] == "queued"
    [pending] = await mail_hub.outbox_rows(queued["id"])
    assert pending["state"] == "pending"
    assert pending["payload"]["message_id"] == queued["external_id"]
    assert mail_hub.smtp.messages == []

    assert await mail_hub.sender().run_once() == 1
    [received] = mail_hub.smtp.messages
    assert received.tls and received.authenticated
    assert received.mail_from == OUR_ADDRESS
    assert received.rcpt_tos == (address,)
    message = _parse(received.content)
    assert message_ids(message["Message-ID"]) == [queued["external_id"]]
    assert str(message["Subject"]) == "Your invoice \u2013 May"
    assert message.get_content_type() == "multipart/mixed"
    body = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert body is not None and "Gr\u00fc\u00dfe" in body.get_content()
    assert html is not None and "<b>invoice</b>" in html.get_content()
    alternative = message.get_payload()[0]  # type: ignore[index]
    assert isinstance(alternative, Message)
    assert alternative.get_content_type() == "multipart/alternative"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "invoice-0815.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == PDF

    sent = await mail_hub.event(queued["external_id"])
    assert sent["status"] == "sent"
    assert "queued as Q1" in sent["data"]["smtp_response"]
    [done] = await mail_hub.outbox_rows(queued["id"])
    assert (done["state"], done["provider_id"]) == ("sent", queued["external_id"])

    # The copy our mail server files in Sent is the same event, not a second one.
    mail_hub.dovecot.append(received.content, folder="Sent")
    ingest = mail_hub.ingest()
    await mail_hub.sync(ingest)
    assert ingest.stored == 0
    timeline = await mail_hub.timeline(customer)
    assert [e["id"] for e in timeline if e["channel"] == "email"] == [queued["id"]]


async def test_a_reply_carries_threading_headers_and_stays_in_the_thread(
    mail_hub: MailHub,
) -> None:
    frm = "Jane Doe <jane.doe@example.org>"
    first = await _inbound(
        mail_hub,
        mail(frm=frm, subject="Question about my order", message_id="<q1@mail.example.org>"),
        "<q1@mail.example.org>",
    )
    response = await mail_hub.send(first["customer_id"], reply_to=first["id"], text="On its way.")
    assert response.status_code == 202, response.text
    reply = response.json()
    assert reply["subject"] == "Re: Question about my order"
    assert reply["thread_id"] == first["thread_key"]
    assert reply["to"] == "jane.doe@example.org"

    assert await mail_hub.sender().run_once() == 1
    [received] = mail_hub.smtp.messages
    message = _parse(received.content)
    assert message_ids(message["Message-ID"]) == [reply["external_id"]]
    assert message["In-Reply-To"] == "<q1@mail.example.org>"
    assert message_ids(message["References"]) == ["<q1@mail.example.org>"]
    assert str(message["Subject"]) == "Re: Question about my order"

    # The customer answers our reply: the same thread again.
    answer = await _inbound(
        mail_hub,
        mail(
            frm=frm,
            subject="Re: Question about my order",
            message_id="<q2@mail.example.org>",
            in_reply_to=reply["external_id"],
            references=["<q1@mail.example.org>", reply["external_id"]],
        ),
        "<q2@mail.example.org>",
    )
    assert answer["thread_key"] == first["thread_key"]

    # Replying to that answer keeps the whole chain in References, root first.
    response = await mail_hub.send(first["customer_id"], reply_to=answer["id"], text="Great!")
    assert response.status_code == 202, response.text
    assert response.json()["thread_id"] == first["thread_key"]
    assert await mail_hub.sender().run_once() == 1
    second = _parse(mail_hub.smtp.messages[-1].content)
    assert second["In-Reply-To"] == "<q2@mail.example.org>"
    assert message_ids(second["References"]) == [
        "<q1@mail.example.org>",
        reply["external_id"],
        "<q2@mail.example.org>",
    ]
    assert str(second["Subject"]) == "Re: Question about my order"


async def test_a_reply_to_a_message_without_references_uses_its_in_reply_to(
    mail_hub: MailHub,
) -> None:
    parent = await _inbound(
        mail_hub,
        mail(
            frm="ola@example.org",
            subject="Re: Delivery",
            message_id="<ola-2@example.org>",
            in_reply_to="<ours-1@commhub.example>",
        ),
        "<ola-2@example.org>",
    )
    response = await mail_hub.send(parent["customer_id"], reply_to=parent["id"], text="Yes")
    assert response.status_code == 202, response.text
    assert await mail_hub.sender().run_once() == 1
    sent = _parse(mail_hub.smtp.messages[-1].content)
    assert message_ids(sent["References"]) == ["<ours-1@commhub.example>", "<ola-2@example.org>"]


async def test_a_transient_refusal_is_retried_later_then_sent(mail_hub: MailHub) -> None:
    customer = await mail_hub.create_customer("tom@example.org")
    response = await mail_hub.send(customer, subject="Reminder", text="Tomorrow at 10")
    queued = response.json()
    mail_hub.smtp.fail_next("data", "451 4.3.0 Try again later")

    sender = mail_hub.sender()
    assert await sender.run_once() == 1
    [row] = await mail_hub.outbox_rows(queued["id"])
    assert row["state"] == "pending"
    assert row["attempts"] == 1
    assert row["not_before"] > utcnow() + timedelta(seconds=10)
    assert "451" in row["last_error"]
    assert (await mail_hub.event(queued["external_id"]))["status"] == "queued"
    assert mail_hub.smtp.messages == []
    # Not due yet: nothing is claimed.
    assert await sender.run_once() == 0

    async with mail_hub.db.write() as conn:
        await conn.execute(
            sa.update(outbox)
            .where(outbox.c.id == row["id"])
            .values(not_before=utcnow() - timedelta(seconds=1))
        )
    assert await sender.run_once() == 1
    [row] = await mail_hub.outbox_rows(queued["id"])
    assert (row["state"], row["attempts"]) == ("sent", 2)
    assert (await mail_hub.event(queued["external_id"]))["status"] == "sent"
    [received] = mail_hub.smtp.messages
    # The retry is the same message: the Message-ID made at queue time.
    assert message_ids(_parse(received.content)["Message-ID"]) == [queued["external_id"]]


async def test_a_permanent_refusal_fails_with_the_servers_reason(mail_hub: MailHub) -> None:
    customer = await mail_hub.create_customer("spam.trap@example.org")
    response = await mail_hub.send(customer, subject="Offer", text="Buy now")
    queued = response.json()
    mail_hub.smtp.fail_next("data", "554 5.7.1 Message rejected as spam")

    assert await mail_hub.sender().run_once() == 1
    event = await mail_hub.event(queued["external_id"])
    assert event["status"] == "failed"
    assert event["data"]["smtp_code"] == 554
    assert "5.7.1 Message rejected as spam" in event["data"]["smtp_reason"]
    [row] = await mail_hub.outbox_rows(queued["id"])
    assert row["state"] == "failed"
    assert "554" in row["last_error"]
    # Never retried.
    async with mail_hub.db.write() as conn:
        await conn.execute(
            sa.update(outbox)
            .where(outbox.c.id == row["id"])
            .values(not_before=utcnow() - timedelta(hours=1))
        )
    assert await mail_hub.sender().run_once() == 0
    assert mail_hub.smtp.messages == []
    timeline = await mail_hub.timeline(customer)
    assert [e["status"] for e in timeline] == ["failed"]


async def test_an_unknown_outcome_is_resent_with_the_same_message_id(mail_hub: MailHub) -> None:
    customer = await mail_hub.create_customer("slow.server@example.org")
    queued = (await mail_hub.send(customer, subject="Slow", text="...")).json()
    # The server takes the message but answers DATA after the client gave up.
    mail_hub.smtp.handler.hang_next_data(1.5)
    impatient = EmailSender(
        mail_hub.services, dataclasses.replace(mail_hub.smtp_config(), timeout=0.5)
    )
    assert await impatient.run_once() == 1
    [row] = await mail_hub.outbox_rows(queued["id"])
    assert row["state"] == "pending"
    assert (await mail_hub.event(queued["external_id"]))["status"] == "queued"

    async with mail_hub.db.write() as conn:
        await conn.execute(
            sa.update(outbox)
            .where(outbox.c.id == row["id"])
            .values(not_before=utcnow() - timedelta(seconds=1))
        )
    await wait_for(lambda: mail_hub.smtp.messages)
    assert await mail_hub.sender().run_once() == 1
    assert (await mail_hub.event(queued["external_id"]))["status"] == "sent"
    copies = [_parse(m.content)["Message-ID"] for m in mail_hub.smtp.messages]
    # Two deliveries, one message: receivers drop the copy by its Message-ID.
    assert [message_ids(c) for c in copies] == [[queued["external_id"]]] * 2


async def test_what_cannot_be_sent_is_refused_before_queuing(mail_hub: MailHub) -> None:
    jane = await mail_hub.create_customer("jane@example.org")
    other = await mail_hub.create_customer("other@example.org")
    nobody = (await mail_hub.api.post("/api/v1/customers", json={"name": "No mail"})).json()
    foreign = await mail_hub.upload(other, "other.pdf", PDF, "application/pdf")
    note = await mail_hub.api.post(f"/api/v1/customers/{jane}/notes", json={"text": "n"})

    cases = [
        (dict(customer_id=jane), "no_subject", "subject"),
        (dict(customer_id=nobody["id"], subject="Hi"), "no_email", None),
        (dict(customer_id=jane, subject="Hi", attachments=[foreign]), "bad_attachment", None),
        (dict(customer_id=jane, reply_to=note.json()["id"]), "bad_reply_to", "reply_to"),
    ]
    for body, code, field in cases:
        response = await mail_hub.api.post(
            "/api/v1/messages", json={"channel": "email", "text": "x", **body}
        )
        assert response.status_code == 422, (code, response.text)
        error = response.json()["error"]
        assert error["code"] == code
        if field:
            assert error["field"] == field
    assert await mail_hub.sender().run_once() == 0
