"""Identity normalization: phones to E.164, emails, social handles (timeline.identity)."""

from __future__ import annotations

import pytest

from timeline.errors import InvalidIdentity
from timeline.events import Identity, IdentityKind
from timeline.identity import normalize, normalize_email, normalize_handle, normalize_phone


@pytest.mark.parametrize(
    "raw",
    [
        "(415) 555-0100",
        "415.555.0100",
        "+1 415 555 0100",
        "tel:+14155550100",
        "TEL:+1-415-555-0100",
        "tel:+1-415-555-0100;ext=12",
        "  415-555-0100  ",
        "4155550100",
        "+14155550100",
    ],
)
def test_phone_spellings_are_one_e164_value(raw: str) -> None:
    assert normalize_phone(raw, "US") == "+14155550100"


def test_all_us_spellings_give_a_single_identity() -> None:
    spellings = ["(415) 555-0100", "415.555.0100", "+1 415 555 0100", "tel:+14155550100"]
    normalized = {normalize(Identity(IdentityKind.PHONE, s), "US") for s in spellings}
    assert normalized == {Identity(IdentityKind.PHONE, "+14155550100")}


def test_default_region_applies_only_to_national_numbers() -> None:
    assert normalize_phone("020 7946 0018", "GB") == "+442079460018"
    assert normalize_phone("+44 20 7946 0018", "US") == "+442079460018"
    # An international number does not depend on the default region.
    assert normalize_phone("+1 415 555 0100", "GB") == "+14155550100"
    with pytest.raises(InvalidIdentity):
        normalize_phone("(415) 555-0100", "GB")


@pytest.mark.parametrize(
    "raw", ["12345", "not a phone", "", "   ", "tel:", "+1 415 555", "555-0100", "+999 123"]
)
def test_invalid_phone_raises_with_the_field(raw: str) -> None:
    with pytest.raises(InvalidIdentity) as info:
        normalize_phone(raw, "US", field="from")
    assert info.value.field == "from"
    assert str(info.value).startswith("from: ")
    digits = "".join(c for c in raw if c.isdigit())
    if len(digits) >= 3:
        # Messages never carry the number itself (DESIGN: no phone numbers in logs).
        assert digits not in "".join(c for c in info.value.message if c.isdigit())


def test_normalize_passes_the_field_through() -> None:
    with pytest.raises(InvalidIdentity) as info:
        normalize(Identity(IdentityKind.PHONE, "12"), "US", field="participants.to")
    assert info.value.field == "participants.to"
    with pytest.raises(InvalidIdentity) as info:
        normalize(Identity(IdentityKind.PHONE, "12"), "US")
    assert info.value.field == "phone"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Jane@Example.COM", "Jane@example.com"),
        ("jane@example.com", "jane@example.com"),
        ("  Jane.Doe+tag@MAIL.Example.org ", "Jane.Doe+tag@mail.example.org"),
        ("mailto:Bob@Example.com", "Bob@example.com"),
        ("MAILTO:Bob@EXAMPLE.com", "Bob@example.com"),
    ],
)
def test_email_case_folds_domain_and_keeps_local_part(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


def test_email_local_parts_differing_in_case_are_distinct() -> None:
    assert normalize_email("Jane@example.com") != normalize_email("jane@example.com")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "jane",
        "jane@",
        "@example.com",
        "jane@example",
        "jane doe@example.com",
        "<jane@example.com>",
        "a@b@example.com",
        "x" * 250 + "@example.com",
    ],
)
def test_invalid_email_raises_with_the_field(raw: str) -> None:
    with pytest.raises(InvalidIdentity) as info:
        normalize_email(raw, field="to")
    assert info.value.field == "to"
    with pytest.raises(InvalidIdentity) as info:
        normalize(Identity(IdentityKind.EMAIL, raw), "US")
    assert info.value.field == "email"


@pytest.mark.parametrize(
    ("network", "ident", "expected"),
    [
        ("telegram", "12345", "telegram:12345"),
        ("Telegram", " 12345 ", "telegram:12345"),
        ("WHATSAPP", "14155550100", "whatsapp:14155550100"),
        ("instagram", "jane.doe_1", "instagram:jane.doe_1"),
        ("messenger", "987654321", "messenger:987654321"),
    ],
)
def test_handles(network: str, ident: str, expected: str) -> None:
    assert normalize_handle(network, ident) == expected
    raw = Identity(IdentityKind.HANDLE, f"{network}:{ident}")
    assert normalize(raw, "US") == Identity(IdentityKind.HANDLE, expected)


@pytest.mark.parametrize(
    "value", ["12345", "myspace:12345", "telegram:", "telegram:has space", "telegram:" + "x" * 129]
)
def test_invalid_handles(value: str) -> None:
    with pytest.raises(InvalidIdentity) as info:
        normalize(Identity(IdentityKind.HANDLE, value), "US", field="sender")
    assert info.value.field == "sender"


def test_normalize_is_idempotent() -> None:
    for identity in (
        Identity(IdentityKind.PHONE, "(415) 555-0100"),
        Identity(IdentityKind.EMAIL, "Jane@Example.COM"),
        Identity(IdentityKind.HANDLE, "Telegram:42"),
    ):
        once = normalize(identity, "US")
        assert normalize(once, "US") == once
