"""Random and mutated bytes: parse_message always returns a storable event, never raises."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.email.parse import parse_message
from tests.channels.email.conftest import FIXTURES, OURS
from timeline.events import Channel

CORPUS = [p.read_bytes() for p in sorted(FIXTURES.glob("*.eml")) if p.stat().st_size < 20_000]
FRAGMENTS = [
    b"Content-Type: multipart/mixed; boundary=",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: message/delivery-status\r\n",
    b"Content-Type: text/plain; charset=",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Disposition: attachment; filename*=UTF-8''%E2%82",
    b"=?utf-8?b?4pyT?=",
    b"=?x-unknown?q?=FF?=",
    b"--b\r\n",
    b"--b--\r\n",
    b"\r\n\r\n",
    b"Message-ID: <",
    b"References: <a@b> <",
    b'From: "\\" <@>,,',
    b"Status: 5.1.",
    b"Date: Mon, 99 Foo 99999 99:99:99 +9999\r\n",
    b"\x00\xff\xfe\x80",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=20))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 200))]
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.sampled_from(FRAGMENTS))
    return bytes(data)


soup = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=30)), max_size=25).map(
    b"".join
)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.one_of(st.binary(max_size=3000), mutated(), soup))
def test_parse_message_never_raises(raw: bytes) -> None:
    parsed = parse_message(raw, our_addresses=OURS)
    event = parsed.event
    assert event.channel is Channel.EMAIL
    assert event.external_id and event.external_id.startswith("<")
    assert event.occurred_at.tzinfo is not None
    texts = [event.subject, event.text, event.html, event.thread_key, *parsed.warnings]
    texts += [t for a in event.attachments for t in (a.filename, a.content_type, a.content_id)]
    texts += [i.value for i in (event.sender, event.recipient) if i is not None]
    for text in texts:
        if text is not None:
            text.encode("utf-8")  # no lone surrogates: storable as is
            assert "\x00" not in text
    json.dumps(dict(event.data), ensure_ascii=False).encode("utf-8")
    for extra in parsed.events():
        assert extra.channel is Channel.EMAIL


_ATEXT = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=6).filter(
    lambda s: "=?" not in s
)
_DOMAIN = st.lists(_ATEXT, min_size=1, max_size=3).map(".".join)
_ADDR = st.builds(lambda local, domain: f"{local}@{domain}", _ATEXT, _DOMAIN)
_NAME = st.one_of(
    st.just(""),
    st.lists(_ATEXT, min_size=1, max_size=3).map(lambda w: " ".join(w) + " "),
    st.lists(_ATEXT, min_size=1, max_size=3).map(lambda w: "  ".join(w)),
    st.text(alphabet="ab ,.:;<>@()", max_size=12).map(lambda t: f'"{t}" '),
)
_MAILBOX = st.one_of(_ADDR, st.builds(lambda n, a: f"{n}<{a}>", _NAME, _ADDR))


@settings(max_examples=300, deadline=None)
@given(st.lists(_MAILBOX, min_size=1, max_size=4), st.sampled_from([",", ", ", " , "]))
def test_the_fast_address_reader_agrees_with_the_rfc5322_parser(
    mailboxes: list[str], separator: str
) -> None:
    # Plain address lists skip headerregistry; whatever they accept must read the same.
    from channels.email.mime import _parsed_addresses, _simple_addresses

    value = separator.join(mailboxes)
    fast = _simple_addresses([value])
    if fast is not None:
        assert fast == list(_parsed_addresses("To", [value]))
