"""Outgoing mail: reply headers and a Message-ID that exists before sending (RELIABILITY 17)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from channels.email.compose import (
    MAX_REFERENCES,
    ReplyContext,
    compose_message,
    message_id_of,
    reply_subject,
)
from channels.email.errors import ComposeError
from channels.email.parse import parse_message
from tests.channels.email.conftest import OURS, fixture_bytes
from timeline.events import Attachment

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def test_message_id_is_made_before_sending_in_our_domain() -> None:
    msg = compose_message(
        from_addr="Support <support@commhub.test>",
        to=["jane.doe@example.org"],
        subject="Your order",
        text="It is on its way.",
    )
    message_id = message_id_of(msg)
    assert message_id.startswith("<") and message_id.endswith("@commhub.test>")
    assert msg["Date"] and msg["MIME-Version"] == "1.0"
    other = compose_message(
        from_addr="support@commhub.test", to=["x@example.org"], subject="s", text="t"
    )
    assert message_id_of(other) != message_id


def test_a_given_message_id_is_kept_for_a_resend() -> None:
    msg = compose_message(
        from_addr="support@commhub.test",
        to=["jane.doe@example.org"],
        subject="s",
        text="t",
        message_id="<outbox-42@commhub.test>",
    )
    assert message_id_of(msg) == "<outbox-42@commhub.test>"


def test_reply_carries_in_reply_to_references_and_re() -> None:
    parent = parse_message(fixture_bytes("reply.eml"), our_addresses=OURS).event
    context = ReplyContext.from_event(parent)
    msg = compose_message(
        from_addr="support@commhub.test",
        to=["jane.doe@example.org"],
        subject=parent.subject or "",
        text="Glad to hear it!",
        reply=context,
    )
    assert msg["In-Reply-To"] == "<CAF1x9Zr2=reply-2@mail.example.org>"
    assert msg["References"].split() == [
        "<CAF1x9Zr2=order-question@mail.example.org>",
        "<outbound-1.171570@commhub.test>",
        "<CAF1x9Zr2=reply-2@mail.example.org>",
    ]
    assert msg["Subject"] == "Re: AW: Re: Question about my order"
    # Parsed back, as the Sent folder copy will be: outbound, same thread root.
    parsed = parse_message(msg.as_bytes(), our_addresses=OURS)
    assert parsed.event.direction.value == "outbound"
    assert parsed.event.thread_key == "<CAF1x9Zr2=order-question@mail.example.org>"
    assert parsed.message_id == message_id_of(msg)


def test_reply_to_a_parent_without_references_uses_its_in_reply_to() -> None:
    context = ReplyContext("<p@x>", in_reply_to=("<g@x>",), subject="Re: Hi")
    assert context.references_for_reply() == ("<g@x>", "<p@x>")
    assert reply_subject("Re: Hi") == "Re: Hi"
    assert reply_subject("RE: Hi") == "RE: Hi"
    assert reply_subject("Hi") == "Re: Hi"
    assert reply_subject(None) == "Re:"


def test_references_are_capped_keeping_root_and_newest() -> None:
    refs = tuple(f"<{i}@x>" for i in range(50))
    result = ReplyContext("<50@x>", references=refs).references_for_reply()
    assert len(result) == MAX_REFERENCES
    assert result[0] == "<0@x>" and result[-1] == "<50@x>" and result[-2] == "<49@x>"


def test_text_html_inline_image_and_file() -> None:
    msg = compose_message(
        from_addr="support@commhub.test",
        to=["jane.doe@example.org"],
        cc=["boss@example.org"],
        bcc=["audit@commhub.test"],
        subject="Grüße \u2013 Ihr Bericht",
        text="Hallo Jürgen",
        html='<p>Hallo Jürgen</p><img src="cid:logo@commhub.test">',
        attachments=[
            Attachment("logo.png", "image/png", content=PNG, content_id="logo@commhub.test"),
            Attachment("Bericht März.pdf", "application/pdf", content=b"%PDF-1.4 test"),
        ],
        date=datetime(2024, 6, 1, 12, 0, tzinfo=UTC),
        headers={"Auto-Submitted": "auto-generated"},
    )
    assert msg.get_content_type() == "multipart/mixed"
    parsed = parse_message(msg.as_bytes(), our_addresses=OURS)
    event = parsed.event
    assert event.subject == "Grüße \u2013 Ihr Bericht"
    assert event.text == "Hallo Jürgen"
    assert event.html is not None and 'src="cid:logo@commhub.test"' in event.html
    got = [(a.filename, a.content_type, a.content_id, a.content) for a in event.attachments]
    assert got == [
        ("logo.png", "image/png", "logo@commhub.test", PNG),
        ("Bericht März.pdf", "application/pdf", None, b"%PDF-1.4 test"),
    ]
    assert event.data["cc"] == ["boss@example.org"]
    assert event.data["auto_submitted"] is True
    assert event.occurred_at == datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def test_html_only_gets_a_text_alternative() -> None:
    msg = compose_message(
        from_addr="support@commhub.test", to=["a@example.org"], subject="s", html="<p>Hi</p>"
    )
    assert msg.get_content_type() == "multipart/alternative"
    assert parse_message(msg.as_bytes(), our_addresses=OURS).event.text == "Hi"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"subject": "evil\r\nBcc: victim@example.org"},
        {"to": ["not an address"]},
        {"to": []},
        {"from_addr": "nobody"},
        {"attachments": [Attachment("x.bin", "application/octet-stream", url="https://x")]},
        {"attachments": [Attachment("i.png", "image/png", content=PNG, content_id="i@x")]},
        {"headers": {"X-Test": "a\nb"}},
        {"headers": {"Subject": "twice"}},
    ],
)
def test_invalid_input_is_a_compose_error(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "from_addr": "support@commhub.test",
        "to": ["a@example.org"],
        "subject": "s",
        "text": "t",
    }
    with pytest.raises(ComposeError):
        compose_message(**{**base, **kwargs})  # type: ignore[arg-type]
