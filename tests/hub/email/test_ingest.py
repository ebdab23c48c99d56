"""Mail in: Dovecot folders synced by ``MailIngest`` onto the right customers' timelines.

Messages are APPENDed to a real Dovecot account from another connection (as a delivery
or another mail program would), then ``MailIngest.sync_once`` reads INBOX and Sent, and
the timeline, documents and database are checked through the agent API.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from channels.email.parse import parse_message
from tests.hub.email.conftest import OUR_ADDRESS, MailHub, fixture_bytes, mail

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")

#: The corpus of channels/email/fixtures that has a sender to file it under.
CORPUS = (
    "alternative.eml",
    "attachment_noname.eml",
    "auto_reply.eml",
    "dsn_422.eml",
    "dsn_511.eml",
    "encoded_words.eml",
    "html_only.eml",
    "huge_header.eml",
    "mixed_related_inline.eml",
    "plain.eml",
    "reply.eml",
    "unknown_charset.eml",
    "wrong_charset.eml",
)


def _reply(frm: str, subject: str, message_id: str, parent: str) -> bytes:
    """A reply that names only its parent (In-Reply-To), as some clients send."""
    return mail(frm=frm, subject=subject, message_id=message_id, in_reply_to=parent)


def _minutes_ago(n: int) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=n)


async def test_corpus_lands_once_on_each_customers_timeline(mail_hub: MailHub) -> None:
    raws = {name: fixture_bytes(name) for name in CORPUS}
    own = {
        "mine-1@example.com": mail(
            frm="Kim <kim@example.com>", subject="First", message_id="<mine-1@example.com>"
        ),
        "mine-2@example.com": mail(
            frm="kim@EXAMPLE.com", subject="Second", message_id="<mine-2@example.com>"
        ),
    }
    mail_hub.dovecot.append(*raws.values(), *own.values())

    results = await mail_hub.sync()
    assert {r.folder: r.fetched for r in results} == {"INBOX": len(raws) + 2, "Sent": 0}

    stored = await mail_hub.email_events()
    external = Counter(e["external_id"] for e in stored)
    assert all(n == 1 for n in external.values()), external
    for name, raw in raws.items():
        parsed = parse_message(raw, our_addresses=[OUR_ADDRESS])
        customer_id = await mail_hub.customer_for(parsed.event.counterpart.value)  # type: ignore[union-attr]
        timeline = await mail_hub.timeline(customer_id)
        mine = [e for e in timeline if e["external_id"] == parsed.message_id]
        assert len(mine) == 1, f"{name}: {len(mine)} copies on the timeline"
        assert mine[0]["channel"] == "email"
        if parsed.report is None:
            assert (mine[0]["kind"], mine[0]["direction"]) == ("message", "inbound"), name
            assert mine[0]["subject"] == parsed.event.subject
    # Both of Kim's messages (address case differs in the domain) are one customer's.
    kim = await mail_hub.customer_for("kim@example.com")
    assert {e["external_id"] for e in await mail_hub.timeline(kim)} == set(f"<{k}>" for k in own)


async def test_attachments_are_documents_downloadable_through_the_api(
    mail_hub: MailHub,
) -> None:
    raw = fixture_bytes("encoded_words.eml")
    inline = fixture_bytes("mixed_related_inline.eml")
    mail_hub.dovecot.append(raw, inline)
    await mail_hub.sync()

    for message, address in ((raw, "ivan@example.ru"), (inline, "alice@example.net")):
        parsed = parse_message(message, our_addresses=[OUR_ADDRESS])
        expected = {a.filename: a for a in parsed.event.attachments}
        assert expected
        customer_id = await mail_hub.customer_for(address)
        [event] = [
            e for e in await mail_hub.timeline(customer_id) if e["external_id"] == parsed.message_id
        ]
        assert {a["filename"] for a in event["attachments"]} == set(expected)
        for summary in event["attachments"]:
            got = await mail_hub.api.get(summary["url"])
            assert got.status_code == 200, got.text
            want = expected[summary["filename"]]
            assert got.content == want.content
            assert got.headers["content-type"].startswith(want.content_type)
            assert got.headers["content-disposition"].startswith("attachment")
        listed = await mail_hub.api.get(f"/api/v1/customers/{customer_id}/documents")
        assert {d["filename"] for d in listed.json()["items"]} >= set(expected)


async def test_a_second_sync_ingests_nothing(mail_hub: MailHub) -> None:
    mail_hub.dovecot.append(
        *(mail(frm=f"c{n}@example.org", subject="Hi", message_id=f"<n{n}@x>") for n in range(5))
    )
    ingest = mail_hub.ingest()
    await mail_hub.sync(ingest)
    assert ingest.stored == 5
    before = await mail_hub.email_events()

    again = mail_hub.ingest()
    results = await mail_hub.sync(again)
    assert [r.fetched for r in results] == [0, 0]
    assert not any(r.resync for r in results)
    assert again.stored == 0
    assert await mail_hub.email_events() == before

    # New mail after that: only it is read (RELIABILITY 24).
    mail_hub.dovecot.append(mail(frm="c9@example.org", subject="Later", message_id="<n9@x>"))
    third = mail_hub.ingest()
    results = await mail_hub.sync(third)
    assert {r.folder: r.fetched for r in results} == {"INBOX": 1, "Sent": 0}
    assert third.stored == 1


async def test_sent_folder_mail_from_our_address_is_outbound(mail_hub: MailHub) -> None:
    sent = mail(
        frm=f"Support <{OUR_ADDRESS}>",
        to="Jane Doe <jane.doe@example.org>",
        subject="Your order has shipped",
        message_id="<from-thunderbird-1@commhub.example>",
        body="It is on its way.",
    )
    mail_hub.dovecot.append(sent, folder="Sent")
    results = await mail_hub.sync()
    assert {r.folder: r.fetched for r in results} == {"INBOX": 0, "Sent": 1}

    jane = await mail_hub.customer_for("jane.doe@example.org")
    [event] = await mail_hub.timeline(jane)
    assert (event["kind"], event["direction"], event["status"]) == ("message", "outbound", "sent")
    assert (event["from"], event["to"]) == (OUR_ADDRESS, "jane.doe@example.org")
    assert event["external_id"] == "<from-thunderbird-1@commhub.example>"
    # Nothing of ours became a customer.
    missing = await mail_hub.api.get("/api/v1/customers", params={"email": OUR_ADDRESS})
    assert missing.json()["items"] == []


async def test_auto_submitted_mail_is_flagged_and_never_answered(mail_hub: MailHub) -> None:
    mail_hub.dovecot.append(fixture_bytes("auto_reply.eml"))
    await mail_hub.sync()
    event = await mail_hub.event("<auto-reply-77@mail.example.org>")
    assert event["data"]["auto_submitted"] is True
    assert event["direction"] == "inbound"
    # Nothing was queued or sent in answer (RELIABILITY 19).
    assert await mail_hub.outbox_rows(event["id"]) == []
    assert await mail_hub.sender().run_once() == 0
    assert mail_hub.smtp.messages == []


MALFORMED = (
    # A multipart whose closing boundary never comes, with broken base64.
    b"From: Broken <broken1@example.org>\r\nTo: support@commhub.example\r\n"
    b"Subject: broken multipart\r\nMessage-ID: <broken-1@example.org>\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="never"\r\n\r\n'
    b"--never\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"%%%not base64%%%\r\n",
    # Raw 8-bit junk in the headers, an unknown charset, a date that is no date.
    b"From: \xff\xfe Sender <broken2@example.org>\r\nTo: support@commhub.example\r\n"
    b"Subject: =?x-unknown?B?!!!?= \xc3\x28 ok\r\nDate: yesterday-ish\r\n"
    b"Message-ID: <broken-2@example.org>\r\nContent-Type: text/plain; charset=bogus\r\n\r\n"
    b"body \xe9\xff\r\n",
    # A header block without any body and a Content-Type without subtype.
    b"From: broken3@example.org\r\nSubject: head only\r\nMessage-ID: <broken-3@example.org>\r\n"
    b"Content-Type: text\r\n",
)


async def test_malformed_messages_never_stop_the_sync(mail_hub: MailHub) -> None:
    first = mail(frm="good@example.org", subject="Before", message_id="<good-1@example.org>")
    last = mail(frm="good@example.org", subject="After", message_id="<good-2@example.org>")
    mail_hub.dovecot.append(first, *MALFORMED, last)
    ingest = mail_hub.ingest()
    await mail_hub.sync(ingest)
    assert ingest.stored == 2 + len(MALFORMED)
    for n in (1, 2):
        assert (await mail_hub.event(f"<good-{n}@example.org>"))["status"] == "received"
    for n in (1, 2, 3):
        event = await mail_hub.event(f"<broken-{n}@example.org>")
        assert event["data"]["warnings"], f"broken-{n} has no parse warning"
        customer = await mail_hub.customer_for(f"broken{n}@example.org")
        assert event["customer_id"] == customer
    # The checkpoint moved past all of them: nothing is read again.
    results = await mail_hub.sync()
    assert [r.fetched for r in results] == [0, 0]


async def test_a_message_without_sender_is_stored_with_a_warning(mail_hub: MailHub) -> None:
    raw = fixture_bytes("missing_headers.eml")
    mail_hub.dovecot.append(raw)
    ingest = mail_hub.ingest()
    await mail_hub.sync(ingest)
    parsed = parse_message(raw, our_addresses=[OUR_ADDRESS])
    event = await mail_hub.event(parsed.message_id)
    assert event["data"]["warnings"]


# -- threading (RELIABILITY 16) ---------------------------------------------------------


async def test_a_reply_that_arrives_before_its_parent_joins_its_thread(
    mail_hub: MailHub,
) -> None:
    jane = "Jane <jane@example.org>"
    reply = mail(
        frm=jane,
        subject="Re: Broken zipper",
        message_id="<r1@example.org>",
        in_reply_to="<p1@commhub.example>",
        references=["<root@example.org>", "<p1@commhub.example>"],
    )
    mail_hub.dovecot.append(reply)
    await mail_hub.sync()
    parent = mail(
        frm=f"Support <{OUR_ADDRESS}>",
        to=jane,
        subject="Re: Broken zipper",
        message_id="<p1@commhub.example>",
        in_reply_to="<root@example.org>",
        references=["<root@example.org>"],
        date=_minutes_ago(10),
    )
    root = mail(
        frm=jane, subject="Broken zipper", message_id="<root@example.org>", date=_minutes_ago(20)
    )
    mail_hub.dovecot.append(parent, folder="Sent")
    mail_hub.dovecot.append(root)
    await mail_hub.sync()

    threads = {
        mid: (await mail_hub.event(mid))["thread_key"]
        for mid in ("<r1@example.org>", "<p1@commhub.example>", "<root@example.org>")
    }
    assert len(set(threads.values())) == 1, threads
    customer = await mail_hub.customer_for("jane@example.org")
    timeline = await mail_hub.timeline(customer)
    assert [e["direction"] for e in timeline] == ["inbound", "outbound", "inbound"]
    assert len({e["thread_id"] for e in timeline}) == 1


async def test_a_whole_thread_read_newest_first_in_one_batch_is_one_thread(
    mail_hub: MailHub,
) -> None:
    frm = "max@example.org"
    mail_hub.dovecot.append(
        mail(frm=frm, subject="Order", message_id="<o1@example.org>"),
        _reply(frm, "Re: Order", "<o2@example.org>", "<o1@example.org>"),
        _reply(frm, "Re: Order", "<o3@example.org>", "<o2@example.org>"),
    )
    await mail_hub.sync()  # a first sync reads newest first: o3, o2, o1
    keys = {(await mail_hub.event(f"<o{n}@example.org>"))["thread_key"] for n in (1, 2, 3)}
    assert len(keys) == 1, keys


async def test_a_late_middle_message_joins_both_ends_of_its_thread(mail_hub: MailHub) -> None:
    frm = "lea@example.org"
    # The grandchild (In-Reply-To only, as some clients send) and the root come first...
    mail_hub.dovecot.append(
        _reply(frm, "Re: Refund", "<g3@example.org>", "<g2@example.org>"),
        mail(frm=frm, subject="Refund", message_id="<g1@example.org>"),
    )
    await mail_hub.sync()
    # ...then the message between them, which names the root as its parent.
    mail_hub.dovecot.append(_reply(frm, "Re: Refund", "<g2@example.org>", "<g1@example.org>"))
    await mail_hub.sync()
    keys = {n: (await mail_hub.event(f"<g{n}@example.org>"))["thread_key"] for n in (1, 2, 3)}
    assert len(set(keys.values())) == 1, keys


async def test_same_subject_with_other_participants_stays_apart(mail_hub: MailHub) -> None:
    mail_hub.dovecot.append(
        mail(frm="anna@example.org", subject="Invoice", message_id="<i-anna@example.org>"),
        mail(frm="ben@example.org", subject="Invoice", message_id="<i-ben@example.org>"),
    )
    await mail_hub.sync()
    mail_hub.dovecot.append(
        # Ben answers without threading headers: still not Anna's thread.
        mail(frm="ben@example.org", subject="Re: Invoice", message_id="<i-ben-2@example.org>"),
        # Anna does the same: her client dropped the headers, the subject fallback joins.
        mail(frm="anna@example.org", subject="RE: invoice", message_id="<i-anna-2@example.org>"),
    )
    await mail_hub.sync()
    key = {
        name: (await mail_hub.event(f"<i-{name}@example.org>"))["thread_key"]
        for name in ("anna", "ben", "ben-2", "anna-2")
    }
    assert key["anna"] != key["ben"]
    assert key["ben-2"] != key["anna"]
    assert key["ben-2"] == key["ben"]
    assert key["anna-2"] == key["anna"]


async def test_a_self_reference_makes_no_loop(mail_hub: MailHub) -> None:
    me = "<loop@example.org>"
    mail_hub.dovecot.append(
        mail(
            frm="loop@example.org", subject="Re: x", message_id=me, in_reply_to=me, references=[me]
        )
    )
    ingest = mail_hub.ingest()
    await mail_hub.sync(ingest)
    assert ingest.stored == 1
    assert (await mail_hub.event(me))["thread_key"] == me
