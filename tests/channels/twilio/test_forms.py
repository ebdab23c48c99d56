"""decode_form gives exactly what urllib's parse_qsl gives, and form_items trusts only it."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.twilio.errors import PayloadError
from channels.twilio.forms import decode_form, encode_form, form_items

from .conftest import FIXTURES, fixture_bytes

# Text made of what matters to the decoder: separators, escapes (valid, truncated,
# invalid UTF-8), plus signs, ASCII and non-ASCII characters.
_PIECES = st.sampled_from(
    ["&", "=", "+", "%", "%2B", "%26", "%3D", "%C3%A9", "%C3", "%A9", "%e2%82", "%ZZ", "%2"]
)
_FORM_TEXT = st.lists(_PIECES | st.text(max_size=4), max_size=30).map("".join)


@given(_FORM_TEXT)
def test_decode_form_equals_parse_qsl(text: str) -> None:
    assert decode_form(text.encode("utf-8")) == parse_qsl(text, keep_blank_values=True)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "&",
        "a",
        "a=",
        "=b",
        "a=1&&b=2&",
        "a=1=2",
        "Body=caf%C3%A9+%2B+tea&From=%2B14155550123",
        "Body=%C3&x=%ZZ%",
        "Body=caf\u00e9%C3&k\u00e9y=%A9\u00e9",
        "MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fx&MediaUrl0=again",
    ],
)
def test_decode_form_edge_cases(text: str) -> None:
    assert decode_form(text.encode("utf-8")) == parse_qsl(text, keep_blank_values=True)


def test_decode_form_of_every_form_fixture_equals_parse_qsl() -> None:
    names = sorted(path.name for path in FIXTURES.glob("*.txt"))
    assert names
    for name in names:
        body = fixture_bytes(name)
        assert decode_form(body) == parse_qsl(body.decode(), keep_blank_values=True), name


def test_decode_form_refuses_bytes_that_are_not_utf8() -> None:
    with pytest.raises(PayloadError):
        decode_form(b"Body=" + quote("x").encode() + b"\xff")


def test_decoded_and_other_forms_give_the_same_items() -> None:
    pairs = [("Body", "a b"), ("Body", "c"), ("To", "+1")]
    decoded = decode_form(encode_form(pairs))
    assert form_items(decoded) == pairs == form_items(pairs) == list(decoded)


def test_form_items_still_checks_plain_lists() -> None:
    with pytest.raises(PayloadError):
        form_items([("Body", b"bytes")])  # type: ignore[list-item]
