"""The recorded corpus: each real-world MIME shape parses to the expected event."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from channels.email.dsn import parse_dsn
from channels.email.parse import ParsedEmail, parse_message
from tests.channels.email.conftest import FIXTURES, OURS, fixture_bytes
from timeline.events import Channel, Direction, IdentityKind, Kind

# Per fixture: the fields it must parse to. Keys name Event attributes, except
# "attachments" (filename, content_type, content_id, size), "data" (a subset of
# Event.data) and "text_has"/"html_has" (substrings).
EXPECTED: dict[str, dict[str, Any]] = {
    "plain.eml": {
        "external_id": "<CAF1x9Zr2=order-question@mail.example.org>",
        "subject": "Question about my order",
        "sender": "jane.doe@example.org",
        "recipient": "support@commhub.test",
        "occurred_at": datetime(2024, 5, 14, 9, 12, 40, tzinfo=UTC),
        "text_has": ["order #4711", "Jane \u2013 sent from my phone"],
        "html": None,
        "data": {"names": {"jane.doe@example.org": "Jane Doe", "support@commhub.test": "Support"}},
    },
    "alternative.eml": {
        "subject": "Invoice 2024-0815",
        "sender": "hans.mueller@example.de",
        "text_has": ["Rechnung für Mai", "bis zum 31. Mai", "Grüße\nHans Müller"],
        "html_has": ["Rechnung f\u00fcr <b>Mai</b>"],
        "attachments": [],
        "data": {
            "cc": ["accounting@example.de"],
            "reply_to": ["billing@example.de"],
            "names": {
                "hans.mueller@example.de": "Müller, Hans",
                "accounting@example.de": "Buchhaltung",
            },
        },
    },
    "mixed_related_inline.eml": {
        "text_has": ["see the picture"],
        "html_has": ['src="cid:logo.2024@example.net"'],
        "attachments": [
            ("error.png", "image/png", "logo.2024@example.net", 69),
            ("app-log.pdf", "application/pdf", None, 69),
        ],
    },
    "wrong_charset.eml": {
        "subject": "Problème de facture",
        "text_has": ["erronée \u2013 merci de vérifier. Coût: 12€"],
        "data": {"names": {"chloe@example.fr": "Chloé"}},
        "warning_has": "read as cp1252",
    },
    "unknown_charset.eml": {
        "subject": "tlhIngan Hol and more",
        "text_has": ["Grüße aus Köln"],
        "warning_has": "unknown charset 'x-klingon'",
    },
    "encoded_words.eml": {
        "subject": "Заказ № 42 \u2013 Lieferung",
        "sender": "ivan@example.ru",
        "text_has": ["Здравствуйте! Где мой заказ?"],
        "attachments": [
            ("Счет № 42.pdf", "application/pdf", None, 69),
            ("Notiz für Sie.txt", "text/plain", None, 7),
        ],
        "data": {
            "to": ["support@commhub.test", "francois@example.fr"],
            "names": {
                "ivan@example.ru": "Иван Петров",
                "support@commhub.test": "André Support",
                "francois@example.fr": "François",
            },
        },
    },
    "missing_headers.eml": {
        "sender": None,
        "recipient": "support@commhub.test",
        "subject": "no sender, no date, no id",
        "text_has": ["broken script"],
        "data": {"synthesized_message_id": True, "from": []},
        "warning_has": "no Message-ID",
    },
    "huge_header.eml": {
        "external_id": "<huge-header-1@lists.example.org>",
        "thread_key": "<thread-00000.a1b2c3@lists.example.org>",
        "text_has": ["Still following"],
        "data": {"in_reply_to": "<thread-01499.a1b2c3@lists.example.org>"},
    },
    "attachment_noname.eml": {
        "text_has": ["Scanned document attached."],
        "attachments": [
            ("attachment-2.bin", "application/octet-stream", None, 256),
            ("inline-3.png", "image/png", "noname-image@example.net", 69),
        ],
    },
    "dsn_511.eml": {
        "thread_key": "<171679860012.4242.9911@commhub.test>",  # the bounced message's
        "kind": Kind.SYSTEM,
        "direction": Direction.INTERNAL,
        "status": "bounced",
        "sender": None,
        "recipient": "no.such.user@example.org",
        "text_has": ["could not\nbe delivered"],
        "attachments": [],
        "data": {"from": ["MAILER-DAEMON@mx.commhub.test"], "auto_submitted": True},
    },
    "dsn_422.eml": {
        "kind": Kind.SYSTEM,
        "direction": Direction.INTERNAL,
        "status": "delayed",
        "sender": None,
        "recipient": "full.mailbox@example.com",
        "attachments": [],
        "data": {"auto_submitted": True},
    },
    "auto_reply.eml": {
        "kind": Kind.MESSAGE,
        "direction": Direction.INBOUND,
        "subject": "Automatic reply: Your ticket #1234",
        "thread_key": "<ticket-1234.outbound@commhub.test>",
        "data": {"auto_submitted": True, "auto_submitted_reason": "Auto-Submitted: auto-replied"},
    },
    "reply.eml": {
        "subject": "AW: Re: Question about my order",
        "thread_key": "<CAF1x9Zr2=order-question@mail.example.org>",
        "data": {
            "in_reply_to": "<outbound-1.171570@commhub.test>",
            "references": [
                "<CAF1x9Zr2=order-question@mail.example.org>",
                "<outbound-1.171570@commhub.test>",
            ],
            "auto_submitted": False,
        },
    },
    "html_only.eml": {
        "subject": "Your weekly deals 🎉",
        "html_has": ["<script>alert(1)</script>"],
        "text": "Deals of the week\n\nSave 20% on everything & more.",
        "data": {"text_from_html": True, "to": ["jane.doe@example.org", "support@commhub.test"]},
    },
}


def test_every_fixture_has_expectations_and_vice_versa() -> None:
    on_disk = {p.name for p in FIXTURES.glob("*.eml")}
    assert on_disk == set(EXPECTED)


def _parse(name: str) -> ParsedEmail:
    return parse_message(fixture_bytes(name), our_addresses=OURS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_message_parses_to_expected_fields(name: str) -> None:
    parsed = _parse(name)
    event, expected = parsed.event, EXPECTED[name]
    assert event.channel is Channel.EMAIL
    assert event.kind is expected.get("kind", Kind.MESSAGE)
    assert event.direction is expected.get("direction", Direction.INBOUND)
    assert event.status == expected.get("status", "received")
    assert event.external_id == parsed.message_id
    assert event.external_id.startswith("<") and event.external_id.endswith(">")
    assert event.occurred_at.tzinfo is not None
    for field in ("external_id", "subject", "occurred_at", "thread_key", "html", "text"):
        if field in expected:
            assert getattr(event, field) == expected[field], field
    for field in ("sender", "recipient"):
        if field in expected:
            identity = getattr(event, field)
            if expected[field] is None:
                assert identity is None
            else:
                assert identity is not None and identity.kind is IdentityKind.EMAIL
                assert identity.value == expected[field]
    for fragment in expected.get("text_has", []):
        assert fragment in (event.text or ""), fragment
    for fragment in expected.get("html_has", []):
        assert fragment in (event.html or ""), fragment
    if "attachments" in expected:
        got = [
            (a.filename, a.content_type, a.content_id, len(a.content or b""))
            for a in event.attachments
        ]
        assert got == expected["attachments"]
    for key, value in expected.get("data", {}).items():
        assert event.data[key] == value, key
    if "warning_has" in expected:
        assert any(expected["warning_has"] in w for w in parsed.warnings), parsed.warnings
    else:
        assert list(parsed.warnings) == [], parsed.warnings
    json.dumps(dict(event.data))  # stored as JSON


def test_inline_image_bytes_are_the_png() -> None:
    image = _parse("mixed_related_inline.eml").event.attachments[0]
    assert image.content is not None and image.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_nameless_attachment_keeps_its_bytes() -> None:
    blob = _parse("attachment_noname.eml").event.attachments[0]
    assert blob.content == bytes(range(256))


def test_missing_message_id_is_synthesized_stably_from_the_bytes() -> None:
    raw = fixture_bytes("missing_headers.eml")
    first = parse_message(raw, our_addresses=OURS).message_id
    assert first == parse_message(raw, our_addresses=OURS).message_id
    assert first.endswith("@commhub.invalid>")
    # Another message gets another id; the same one with CRLF (as IMAP returns it) does not.
    assert parse_message(raw + b"P.S.\n", our_addresses=OURS).message_id != first
    assert parse_message(raw.replace(b"\n", b"\r\n"), our_addresses=OURS).message_id == first


def test_missing_date_falls_back_to_received_at() -> None:
    when = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    event = parse_message(
        fixture_bytes("missing_headers.eml"), our_addresses=OURS, received_at=when
    ).event
    assert event.occurred_at == when


def test_missing_date_prefers_the_received_header() -> None:
    raw = b"Received: from a by b; Mon, 3 Jun 2024 10:00:00 +0200\r\n" + fixture_bytes(
        "missing_headers.eml"
    )
    event = parse_message(raw, our_addresses=OURS).event
    assert event.occurred_at == datetime(2024, 6, 3, 8, 0, tzinfo=UTC)


def test_message_id_keeps_its_case() -> None:
    raw = fixture_bytes("plain.eml").replace(b"order-question", b"Order-Question")
    assert parse_message(raw, our_addresses=OURS).message_id == (
        "<CAF1x9Zr2=Order-Question@mail.example.org>"
    )


# -- direction ---------------------------------------------------------------------------


def test_mail_from_our_address_is_outbound_to_the_customer() -> None:
    raw = (
        b"From: Support <Support@CommHub.test>\r\nTo: Jane <jane.doe@example.org>\r\n"
        b"Cc: support@commhub.test\r\nSubject: Re: Question\r\n"
        b"Message-ID: <out-1@commhub.test>\r\nDate: Tue, 14 May 2024 13:00:00 +0000\r\n\r\nHi\r\n"
    )
    event = parse_message(raw, our_addresses=["support@commhub.test"]).event
    assert event.direction is Direction.OUTBOUND and event.status == "sent"
    assert event.recipient is not None and event.recipient.value == "jane.doe@example.org"
    assert event.counterpart == event.recipient


def test_sent_folder_makes_it_outbound_even_from_an_unlisted_address() -> None:
    raw = fixture_bytes("plain.eml")
    event = parse_message(raw, our_addresses=(), folder_is_sent=True).event
    assert event.direction is Direction.OUTBOUND


def test_domain_entry_matches_every_address_of_the_domain() -> None:
    raw = fixture_bytes("plain.eml").replace(b"jane.doe@example.org", b"agent7@commhub.test")
    event = parse_message(raw, our_addresses=["@commhub.test"]).event
    assert event.direction is Direction.OUTBOUND


# -- auto-submitted (RFC 3834) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "auto"),
    [
        (b"Auto-Submitted: auto-generated", True),
        (b"Auto-Submitted: no", False),
        (b"Auto-Submitted: No ; comment", False),
        (b"Precedence: bulk", True),
        (b"Precedence: list", True),
        (b"Precedence: junk", True),
        (b"Precedence: first-class", False),
        (b"X-Autorespond: yes", True),
        (b"Return-Path: <>", True),
        (b"X-Mailer: Outlook", False),
    ],
)
def test_auto_submitted_flag(header: bytes, auto: bool) -> None:
    raw = header + b"\r\n" + fixture_bytes("plain.eml")
    parsed = parse_message(raw, our_addresses=OURS)
    assert parsed.auto_submitted is auto
    assert parsed.event.data["auto_submitted"] is auto


# -- delivery reports (RFC 3464, RELIABILITY 18) ----------------------------------------


def test_dsn_511_is_a_hard_bounce_of_our_message() -> None:
    parsed = _parse("dsn_511.eml")
    report = parsed.report
    assert report is not None and report.hard
    assert report.status == "5.1.1"
    assert report.original_message_id == "<171679860012.4242.9911@commhub.test>"
    assert [r.address for r in report.failed] == ["no.such.user@example.org"]
    assert report.reporting_mta == "mx.commhub.test"
    assert "User unknown" in (report.failed[0].diagnostic or "")


def test_dsn_422_is_soft_and_read_from_text_rfc822_headers() -> None:
    report = _parse("dsn_422.eml").report
    assert report is not None and not report.hard
    assert report.status == "4.2.2"
    assert report.failed[0].action == "delayed"
    assert report.original_message_id == "<171688679801.77.1234@commhub.test>"


def test_dsn_is_never_shown_as_a_customer_reply() -> None:
    for name in ("dsn_511.eml", "dsn_422.eml"):
        event = _parse(name).event
        assert event.kind is Kind.SYSTEM
        assert event.direction is not Direction.INBOUND
        assert event.sender is None  # not from the customer, and no MAILER-DAEMON customer


def test_dsn_updates_the_status_of_the_bounced_message() -> None:
    _, update = _parse("dsn_511.eml").events()
    assert update.update_only and update.external_id == "<171679860012.4242.9911@commhub.test>"
    assert update.status == "bounced" and update.direction is Direction.OUTBOUND
    assert update.data["dsn"]["hard"] is True
    soft = _parse("dsn_422.eml").events()[1]
    assert soft.status == "delayed" and soft.data["dsn"]["hard"] is False


def test_parse_dsn_accepts_bytes_and_says_none_for_ordinary_mail() -> None:
    assert parse_dsn(fixture_bytes("plain.eml")) is None
    report = parse_dsn(fixture_bytes("dsn_511.eml"))
    assert report is not None and report.status == "5.1.1"
    assert _parse("plain.eml").events() == [_parse("plain.eml").event]
