"""X-Twilio-Signature: published vectors, and every way a forgery must fail (RELIABILITY 1, 2)."""

from __future__ import annotations

import hashlib
import io

import pytest
from starlette.datastructures import FormData, UploadFile

from channels.twilio.signature import public_url_for, sign, verify
from tests.channels.twilio.conftest import fixture_bytes, fixture_form

# Twilio's documented example (webhooks-security) and twilio-python's unit tests.
TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+12349013030"),
    ("Digits", "1234"),
    ("From", "+12349013030"),
    ("To", "+18005551212"),
]
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
SDK_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}
SDK_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
BODY_SIGNATURE = "a9nBmqA0ju/hNViExpshrM61xv4="


def _form(pairs: list[tuple[str, str]]) -> FormData:
    """Starlette's FormData, as the hub's webhook gets it (repeated keys kept)."""
    items: list[tuple[str, str | UploadFile]] = list(pairs)
    return FormData(items)


def test_published_form_vector() -> None:
    assert sign(TOKEN, URL, DOC_PARAMS) == DOC_SIGNATURE
    assert verify(TOKEN, URL, DOC_PARAMS, None, DOC_SIGNATURE)


def test_sdk_vector_as_mapping_and_as_starlette_form() -> None:
    assert verify(TOKEN, URL, SDK_PARAMS, None, SDK_SIGNATURE)
    assert verify(TOKEN, URL, _form(list(SDK_PARAMS.items())), None, SDK_SIGNATURE)


def test_repeated_keys_are_all_signed() -> None:
    pairs = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    expected = "IK+Dwps556ElfBT0I3Rgjkr1wJU="  # twilio-python's multi-dict vector
    assert sign(TOKEN, URL, pairs) == expected
    assert verify(TOKEN, URL, _form(pairs), None, expected)
    assert not verify(TOKEN, URL, pairs[:-1], None, expected)


@pytest.mark.parametrize(
    "pairs",
    [
        [],
        [("Body", "")],
        [("b", "2"), ("a", "9"), ("a", "1"), ("a", "1"), ("ab", ""), ("a", "10")],
        [("Body", "caf\u00e9 \U0001f600 & = +%"), ("To", "+14155550123"), ("From", "+1")],
    ],
)
def test_verify_agrees_with_the_sdk_on_repeated_and_duplicate_pairs(
    pairs: list[tuple[str, str]],
) -> None:
    # verify computes the HMAC itself; sign is the SDK's RequestValidator.
    signature = sign(TOKEN, URL, pairs)
    assert verify(TOKEN, URL, pairs, None, signature)
    assert not verify(TOKEN, URL, [*pairs, ("x", "y")], None, signature)


def test_published_body_sha256_vector() -> None:
    body = fixture_bytes("json_body_sha256.json")
    assert hashlib.sha256(body).hexdigest() == BODY_HASH
    url = f"{URL}&bodySHA256={BODY_HASH}"
    assert sign(TOKEN, url) == BODY_SIGNATURE
    assert verify(TOKEN, url, None, body, BODY_SIGNATURE)


def test_default_port_is_accepted_as_the_sdk_does() -> None:
    with_port = URL.replace(".com/", ".com:443/")
    assert verify(TOKEN, with_port, DOC_PARAMS, None, DOC_SIGNATURE)
    assert verify(TOKEN, URL, DOC_PARAMS, None, sign(TOKEN, with_port, DOC_PARAMS))


@pytest.mark.parametrize(
    ("url", "params", "signature"),
    [
        pytest.param(URL, [*DOC_PARAMS[:-1], ("To", "+18005551213")], DOC_SIGNATURE, id="tampered"),
        pytest.param(URL, [*DOC_PARAMS, ("Body", "x")], DOC_SIGNATURE, id="added-field"),
        pytest.param(URL, DOC_PARAMS[1:], DOC_SIGNATURE, id="removed-field"),
        pytest.param(URL.replace("mycompany", "evil"), DOC_PARAMS, DOC_SIGNATURE, id="other-host"),
        pytest.param(URL.replace("https", "http"), DOC_PARAMS, DOC_SIGNATURE, id="other-scheme"),
        pytest.param(URL + "&baz=3", DOC_PARAMS, DOC_SIGNATURE, id="other-query"),
        pytest.param(URL, DOC_PARAMS, None, id="missing-header"),
        pytest.param(URL, DOC_PARAMS, "", id="empty-header"),
        pytest.param(URL, DOC_PARAMS, DOC_SIGNATURE.lower(), id="case-changed"),
        pytest.param(URL, DOC_PARAMS, "0/KCTR6DLpKmkAf8muzZqo1nDgQ", id="truncated"),
    ],
)
def test_forgeries_fail(url: str, params: list[tuple[str, str]], signature: str | None) -> None:
    assert not verify(TOKEN, url, params, None, signature)


def test_wrong_token_fails() -> None:
    assert not verify("54321", URL, DOC_PARAMS, None, DOC_SIGNATURE)
    assert not verify("", URL, DOC_PARAMS, None, DOC_SIGNATURE)


@pytest.mark.parametrize(
    ("url", "body"),
    [
        pytest.param(f"{URL}&bodySHA256={BODY_HASH}", b'{"property": "evil"}', id="body-changed"),
        pytest.param(f"{URL}&bodySHA256={'0' * 64}", None, id="bad-hash"),
        pytest.param(URL, None, id="no-hash-in-url"),
        pytest.param(f"{URL}&bodySHA256=", None, id="empty-hash"),
    ],
)
def test_json_body_forgeries_fail(url: str, body: bytes | None) -> None:
    raw = body if body is not None else fixture_bytes("json_body_sha256.json")
    assert not verify(TOKEN, url, None, raw, sign(TOKEN, url))


def test_a_file_upload_instead_of_text_fails() -> None:
    form = FormData([("From", UploadFile(io.BytesIO(b"x"), filename="x"))])
    assert not verify(TOKEN, URL, form, None, sign(TOKEN, URL, [("From", "x")]))


def test_recorded_inbound_form_signed_with_a_test_secret() -> None:
    form = fixture_form("inbound_sms.txt")
    url = public_url_for("https://hub.example.com", "/webhooks/twilio/sms")
    signature = sign("test-secret", url, form)
    assert verify("test-secret", url, _form(form), None, signature)
    internal = public_url_for("http://10.0.0.5:8000", "/webhooks/twilio/sms")
    assert not verify("test-secret", internal, form, None, signature)


@pytest.mark.parametrize(
    ("base", "path", "query", "expected"),
    [
        (
            "https://hub.example.com",
            "/webhooks/twilio/sms",
            "",
            "https://hub.example.com/webhooks/twilio/sms",
        ),
        (
            "https://hub.example.com/",
            "webhooks/twilio/sms",
            "",
            "https://hub.example.com/webhooks/twilio/sms",
        ),
        (
            "https://example.com/hub",
            "/webhooks/twilio/sms",
            "a=1&b=%2B1",
            "https://example.com/hub/webhooks/twilio/sms?a=1&b=%2B1",
        ),
    ],
)
def test_public_url_for(base: str, path: str, query: str, expected: str) -> None:
    assert public_url_for(base, path, query) == expected
