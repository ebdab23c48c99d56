"""Normalizing identities: phones to E.164, emails, social handles.

Phones go through ``phonenumbers`` (libphonenumber) with the configured default region,
so ``(415) 555-0100``, ``415.555.0100``, ``+1 415 555 0100`` and ``tel:+14155550100``
(RFC 3966) are one identity. Emails keep their local part as given (RFC 5321 2.4 leaves
it case-sensitive) and case-fold the domain.
"""

from __future__ import annotations

import functools
import re

import phonenumbers

from timeline.errors import InvalidIdentity
from timeline.events import Identity, IdentityKind

_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]{2,}$")
_HANDLE_NETWORKS = frozenset({"telegram", "whatsapp", "messenger", "instagram"})
_HANDLE_ID = re.compile(r"^[A-Za-z0-9_.@+-]{1,128}$")


def normalize_phone(raw: str, region: str, *, field: str = "phone") -> str:
    """E.164 form of a phone number written any common way; InvalidIdentity if not valid."""
    try:
        return _e164(raw, region)
    except InvalidIdentity as exc:
        raise InvalidIdentity(field, exc.message) from None


@functools.lru_cache(maxsize=65536)
def _e164(raw: str, region: str) -> str:
    # libphonenumber costs ~30 us a number; webhooks repeat the same few numbers.
    field = "phone"
    text = raw.strip()
    if text.lower().startswith("tel:"):
        text = text[4:].split(";", 1)[0]
    if not text:
        raise InvalidIdentity(field, "empty phone number")
    try:
        number = _parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentity(field, f"not a phone number ({exc._msg})") from None
    if not _is_valid(number):
        raise InvalidIdentity(field, "not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_NANP_E164 = re.compile(r"\+1[2-9][0-9]{9}")


def _parse(text: str, region: str) -> phonenumbers.PhoneNumber:
    """``phonenumbers.parse``, with a shortcut for a +1 number already in E.164 form.

    What the library makes of ``+1`` and ten digits not starting with 0 or 1: country
    code 1, those digits as the national number (there is no national prefix to strip,
    +1's being ``1``), nothing else set. Its generic steps cost ~9 us a number; Twilio
    sends numbers this way. Same result: ``tests/timeline/test_ingest_phones.py``.
    """
    if _NANP_E164.fullmatch(text):
        return phonenumbers.PhoneNumber(country_code=1, national_number=int(text[2:]))
    return phonenumbers.parse(text, region)


def _is_valid(number: phonenumbers.PhoneNumber) -> bool:
    """``phonenumbers.is_valid_number``, without its second pass for the common case.

    ``is_valid_number`` finds the number's region, then checks the number against that
    region's patterns. For a country code shared by many regions (+1: 25 of them) the
    first step already checks the main region's patterns when it has no leading-digits
    rule, and the second repeats the check. When that first check passes, the answer is
    True either way; otherwise ask the library.
    """
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(number.country_code or 0, ())
    if len(regions) > 1:
        main = phonenumbers.PhoneMetadata.metadata_for_region(regions[0], None)
        if (
            main is not None
            and main.leading_digits is None
            and phonenumbers.is_valid_number_for_region(number, regions[0])
        ):
            return True
    return bool(phonenumbers.is_valid_number(number))


def normalize_email(raw: str, *, field: str = "email") -> str:
    """``local@domain`` with the domain lower-cased; InvalidIdentity if not an address."""
    text = raw.strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    if not _EMAIL.match(text) or len(text) > 254:
        raise InvalidIdentity(field, "not an email address")
    local, _, domain = text.rpartition("@")
    return f"{local}@{domain.lower()}"


def normalize_handle(network: str, ident: str, *, field: str = "handle") -> str:
    """``network:id`` for a social network account."""
    net = network.strip().lower()
    if net not in _HANDLE_NETWORKS:
        raise InvalidIdentity(field, f"unknown network {network!r}")
    ident = ident.strip()
    if not _HANDLE_ID.match(ident):
        raise InvalidIdentity(field, "not a valid account id")
    return f"{net}:{ident}"


def normalize(identity: Identity, region: str, *, field: str | None = None) -> Identity:
    """The normalized form of any identity."""
    if identity.kind is IdentityKind.PHONE:
        value = normalize_phone(identity.value, region, field=field or "phone")
    elif identity.kind is IdentityKind.EMAIL:
        value = normalize_email(identity.value, field=field or "email")
    else:
        network, sep, ident = identity.value.partition(":")
        if not sep:
            raise InvalidIdentity(field or "handle", "expected network:id")
        value = normalize_handle(network, ident, field=field or "handle")
    return Identity(identity.kind, value)
