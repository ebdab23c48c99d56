"""RELIABILITY 35 (parsers): random and mutated payloads never raise anything but the
documented error (Twilio: ``PayloadError`` -> 400; email: never raises; API JSON:
malformed JSON or a validation error -> 400/422).

One table, :data:`PARSERS`: a later parser joins with one line (name, call, strategy of
inputs, allowed exceptions). Inputs mix three sources: recorded fixtures mutated field by
field or byte by byte, fixtures with fields dropped or duplicated, and random data.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from channels.email.parse import parse_message
from channels.twilio.errors import PayloadError
from channels.twilio.forms import decode_form
from channels.twilio.parse import parse_inbound_sms, parse_status_callback
from channels.twilio.voice import parse_call_status, parse_inbound_call
from hub import schemas

ROOT = Path(__file__).resolve().parents[2]
TWILIO = ROOT / "channels" / "twilio" / "fixtures"
EMAIL = ROOT / "channels" / "email" / "fixtures"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _forms(*names: str) -> list[list[tuple[str, str]]]:
    return [decode_form((TWILIO / name).read_bytes().strip()) for name in names]


SMS_FORMS = _forms("inbound_sms.txt", "inbound_mms_2_media.txt", "inbound_stop.txt")
STATUS_FORMS = _forms(
    "status_delivered.txt",
    "status_sent.txt",
    "status_failed_21610.txt",
    "status_undelivered_30005.txt",
)
VOICE_FORMS = _forms("voice_inbound_call.txt", "voice_status_completed.txt")
MAILS = [p.read_bytes() for p in sorted(EMAIL.glob("*.eml"))]

#: Values that break naive parsers: empty, huge, control characters, odd numbers.
_NASTY = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\r\nFAKE: 1",
        "-1",
        "99999999999999999999",
        "NaN",
        "1e309",
        "+",
        "%ZZ",
        "ä" * 3,
        "\ud7ff",
        "http://",
        "MM" + "0" * 40,
        "a" * 5000,
    ]
)
_TEXT = st.one_of(_NASTY, st.text(max_size=40))


@st.composite
def mutated_form(draw: st.DrawFn, seeds: list[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """A recorded form with values replaced, fields dropped, repeated or added."""
    form = list(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        if not form:
            break
        i = draw(st.integers(0, len(form) - 1))
        action = draw(st.sampled_from(["replace", "drop", "repeat", "add"]))
        key, _value = form[i]
        if action == "replace":
            form[i] = (key, draw(_TEXT))
        elif action == "drop":
            del form[i]
        elif action == "repeat":
            form.append((key, draw(_TEXT)))
        else:
            form.append((draw(st.sampled_from([k for k, _ in form] + ["NumMedia"])), draw(_TEXT)))
    return form


random_form = st.lists(st.tuples(_TEXT, _TEXT), max_size=12)


@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A recorded message with bytes flipped, cut, or a chunk repeated."""
    raw = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        if not raw:
            break
        i = draw(st.integers(0, len(raw) - 1))
        action = draw(st.sampled_from(["flip", "cut", "dup", "insert"]))
        if action == "flip":
            raw[i] = draw(st.integers(0, 255))
        elif action == "cut":
            del raw[i:]
        elif action == "dup":
            raw[i:i] = raw[i : i + draw(st.integers(1, 200))]
        else:
            raw[i:i] = draw(st.sampled_from([b"\r\n", b"\r\n\r\n", b"=?utf-8?b?", b"--", b"\x00"]))
    return bytes(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
_CUSTOMER = {
    "name": "Ann",
    "phones": ["+4791234567"],
    "emails": ["a@b.example"],
    "handles": [{"network": "telegram", "id": "ann"}],
    "attributes": {"x": 1},
}


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """Valid bodies with one field replaced, random JSON, and broken bytes."""
    kind = draw(st.sampled_from(["mutated", "random", "bytes"]))
    if kind == "mutated":
        body: dict[str, Any] = dict(_CUSTOMER)
        body[draw(st.sampled_from([*body, "extra"]))] = draw(json_values)
        return json.dumps(body).encode()
    if kind == "random":
        return json.dumps(draw(json_values)).encode()
    return draw(st.binary(max_size=200))


def _api_json(raw: bytes) -> Any:
    """What ``hub.routing.Ctx.body`` does with a body before the handler sees it."""
    return schemas.CustomerIn.model_validate(json.loads(raw))


@dataclasses.dataclass(frozen=True)
class Parser:
    """A parser under fuzzing: how to call it, on what, and what it may raise."""

    name: str
    call: Callable[[Any], Any]
    inputs: st.SearchStrategy[Any]
    allowed: tuple[type[BaseException], ...] = ()


PARSERS = [
    Parser(
        "twilio sms inbound",
        lambda f: parse_inbound_sms(f, received_at=NOW),
        st.one_of(mutated_form(SMS_FORMS), random_form),
        (PayloadError,),
    ),
    Parser(
        "twilio sms status",
        lambda f: parse_status_callback(f, received_at=NOW),
        st.one_of(mutated_form(STATUS_FORMS), random_form),
        (PayloadError,),
    ),
    Parser(
        "twilio voice inbound",
        lambda f: parse_inbound_call(f, received_at=NOW),
        st.one_of(mutated_form(VOICE_FORMS), random_form),
        (PayloadError,),
    ),
    Parser(
        "twilio voice status",
        parse_call_status,
        st.one_of(mutated_form(VOICE_FORMS), random_form),
        (PayloadError,),
    ),
    Parser("twilio form bytes", decode_form, st.binary(max_size=300), (PayloadError,)),
    Parser(
        "email mime",
        lambda raw: parse_message(raw, our_addresses={"support@hub.example"}),
        st.one_of(mutated_bytes(MAILS), st.binary(max_size=500)),
        (),
    ),
    Parser(
        "api json",
        _api_json,
        json_bodies(),
        (json.JSONDecodeError, UnicodeDecodeError, ValidationError),
    ),
]


@pytest.mark.parametrize("parser", PARSERS, ids=[p.name for p in PARSERS])
def test_parsers_raise_only_their_documented_errors(parser: Parser) -> None:
    @settings(
        max_examples=150,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(payload=parser.inputs)
    def run(payload: Any) -> None:
        try:
            parser.call(payload)
        except parser.allowed:
            pass

    run()
