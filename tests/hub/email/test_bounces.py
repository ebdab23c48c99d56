"""Delivery reports for mail we sent (RELIABILITY 18), end to end.

The agent sends through the API, ``EmailSender`` hands the message to aiosmtpd (STARTTLS
and AUTH), and later the mailer daemon's report lands in the Dovecot INBOX, referencing
the Message-ID the hub made when it queued the message. The sync must move our message
to ``bounced`` for a 5.1.1 (and refuse the address from then on), leave it alone for a
4.2.2, and never show the report as a customer's reply.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.hub.email.conftest import MailHub, dsn, mail

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")


async def _send(hub: MailHub, customer_id: str, subject: str) -> dict[str, Any]:
    response = await hub.send(customer_id, subject=subject, text="See you tomorrow at 10.")
    assert response.status_code == 202, response.text
    queued: dict[str, Any] = response.json()
    assert await hub.sender().run_once() == 1
    assert (await hub.event(queued["external_id"]))["status"] == "sent"
    return queued


async def test_a_hard_bounce_marks_the_message_and_refuses_the_address(
    mail_hub: MailHub,
) -> None:
    address = "no.such.user@example.org"
    customer = await mail_hub.create_customer(address)
    queued = await _send(mail_hub, customer, "Your appointment")
    [received] = mail_hub.smtp.messages
    assert received.rcpt_tos == (address,)

    mail_hub.dovecot.append(
        dsn(
            original_id=queued["external_id"],
            recipient=address,
            status="5.1.1",
            message_id="<bounce-1@mx.commhub.example>",
        )
    )
    await mail_hub.sync()

    ours = await mail_hub.event(queued["external_id"])
    assert ours["status"] == "bounced"
    assert ours["data"]["dsn"]["status"] == "5.1.1"
    assert ours["data"]["dsn"]["hard"] is True

    timeline = await mail_hub.timeline(customer)
    report = next(e for e in timeline if e["external_id"] == "<bounce-1@mx.commhub.example>")
    # A system event on the customer's timeline, never a reply from the customer.
    assert (report["kind"], report["direction"], report["status"]) == (
        "system",
        "internal",
        "bounced",
    )
    assert report["from"] is None
    assert report["data"]["auto_submitted"] is True
    assert not [e for e in timeline if e["kind"] == "message" and e["direction"] == "inbound"]
    # The report sits in the thread of the message it is about.
    assert report["thread_id"] == queued["thread_id"]

    bounce = await mail_hub.bounce(address)
    assert bounce is not None and bounce["hard"] is True and bounce["status"] == "5.1.1"
    refused = await mail_hub.send(customer, subject="Another try")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "bounced"
    assert "5.1.1" in error["message"]
    assert await mail_hub.sender().run_once() == 0
    assert len(mail_hub.smtp.messages) == 1

    # Reading the report again changes nothing.
    await mail_hub.sync()
    assert len(await mail_hub.timeline(customer)) == len(timeline)

    # Mail from the address proves it works again: sending is allowed once more.
    mail_hub.dovecot.append(mail(frm=address, subject="I am back", message_id="<back@example.org>"))
    await mail_hub.sync()
    assert await mail_hub.bounce(address) is None
    again = await mail_hub.send(customer, subject="Welcome back")
    assert again.status_code == 202, again.text


async def test_a_delay_report_does_not_mark_the_address(mail_hub: MailHub) -> None:
    address = "full.mailbox@example.com"
    customer = await mail_hub.create_customer(address)
    queued = await _send(mail_hub, customer, "Your invoice")
    mail_hub.dovecot.append(
        dsn(
            original_id=queued["external_id"],
            recipient=address,
            status="4.2.2",
            message_id="<delay-1@mx.commhub.example>",
        )
    )
    await mail_hub.sync()

    assert (await mail_hub.event(queued["external_id"]))["status"] == "sent"
    report = await mail_hub.event("<delay-1@mx.commhub.example>")
    assert (report["kind"], report["direction"], report["status"]) == (
        "system",
        "internal",
        "delayed",
    )
    assert report["customer_id"] == customer
    bounce = await mail_hub.bounce(address)
    assert bounce is None or bounce["hard"] is False
    allowed = await mail_hub.send(customer, subject="Still here")
    assert allowed.status_code == 202, allowed.text


async def test_a_soft_bounce_never_downgrades_a_hard_one(mail_hub: MailHub) -> None:
    address = "gone@example.net"
    customer = await mail_hub.create_customer(address)
    first = await _send(mail_hub, customer, "One")
    hard = dsn(
        original_id=first["external_id"],
        recipient=address,
        status="5.1.1",
        message_id="<hard@mx>",
    )
    soft = dsn(
        original_id=first["external_id"],
        recipient=address,
        status="4.4.1",
        message_id="<soft@mx>",
    )
    mail_hub.dovecot.append(hard, soft)
    await mail_hub.sync()
    bounce = await mail_hub.bounce(address)
    assert bounce is not None and bounce["hard"] is True
    assert (await mail_hub.event(first["external_id"]))["status"] == "bounced"
    assert (await mail_hub.send(customer, subject="x")).status_code == 409


async def test_a_resync_does_not_lift_a_hard_bounce(mail_hub: MailHub) -> None:
    address = "left.company@example.org"
    mail_hub.dovecot.append(
        mail(frm=address, subject="Question", message_id="<old-question@example.org>")
    )
    await mail_hub.sync()
    customer = await mail_hub.customer_for(address)
    queued = await _send(mail_hub, customer, "Re: Question")
    mail_hub.dovecot.append(
        dsn(
            original_id=queued["external_id"],
            recipient=address,
            status="5.1.1",
            message_id="<bounce-left@mx.commhub.example>",
        )
    )
    await mail_hub.sync()
    assert (await mail_hub.send(customer, subject="x")).status_code == 409

    mail_hub.dovecot.change_uidvalidity("INBOX")
    results = {r.folder: r for r in await mail_hub.sync()}
    assert results["INBOX"].resync
    refused = await mail_hub.send(customer, subject="Still bounced?")
    assert refused.status_code == 409, refused.text
