"""Phone validation on the ingest path agrees with libphonenumber's ``is_valid_number``.

``timeline.identity`` skips libphonenumber's second pass when the main region of a shared
country code (+1's US, +7's RU, +44's GB...) already matches; the answer must stay the
library's for every number, valid or not, in every region sharing a code.
"""

from __future__ import annotations

import random

import phonenumbers
import pytest

from timeline.errors import InvalidIdentity
from timeline.identity import _NANP_E164, _is_valid, _parse, normalize_phone

SHARED_CODES = ["1", "7", "44", "39", "47", "61", "212", "262", "290", "358", "590", "599"]


def _numbers() -> list[str]:
    rng = random.Random(1604)
    numbers = [
        "+14155550100",  # US
        "+16135550123",  # CA
        "+18765550123",  # JM (shares +1, not the main region)
        "+12425550123",  # BS
        "+15555550100",  # not a valid US number
        "+74951234567",  # RU
        "+77012345678",  # KZ (shares +7)
        "+447911123456",  # GB
        "+447624123456",  # IM (shares +44)
        "+33612345678",  # FR (one region)
    ]
    for code in SHARED_CODES:
        for _ in range(300):
            length = rng.randint(6, 11)
            numbers.append("+" + code + "".join(rng.choice("0123456789") for _ in range(length)))
    return numbers


@pytest.mark.parametrize("region", ["US", "GB"])
def test_validity_is_libphonenumbers(region: str) -> None:
    valid = 0
    for raw in _numbers():
        number = phonenumbers.parse(raw, region)
        expected = phonenumbers.is_valid_number(number)
        assert _is_valid(number) == expected, raw
        valid += expected
        if expected:
            assert normalize_phone(raw, region) == phonenumbers.format_number(
                number, phonenumbers.PhoneNumberFormat.E164
            )
        else:
            with pytest.raises(InvalidIdentity):
                normalize_phone(raw, region)
    assert valid > 100  # the sample holds both kinds


@pytest.mark.parametrize("region", ["US", "GB", "CA", "JM"])
def test_e164_shortcut_is_what_parse_makes(region: str) -> None:
    rng = random.Random(2311)
    shortcut = 0
    samples = ["+12015550123", "+19999999999", "+14155550100", "+10155550100", "+11155550100"]
    samples += ["+1" + "".join(rng.choice("0123456789") for _ in range(10)) for _ in range(3000)]
    for raw in samples:
        number = _parse(raw, region)
        assert number == phonenumbers.parse(raw, region), raw
        shortcut += bool(_NANP_E164.fullmatch(raw))
    assert 2000 < shortcut < len(samples)  # both paths taken


def test_validity_of_every_number_type_is_libphonenumbers() -> None:
    """The main region's types are tried fixed line and mobile first: same answers."""
    rng = random.Random(2312)
    samples = [
        "+18005550100",  # US toll free
        "+18885550100",
        "+19005550100",  # US premium rate
        "+15005550100",  # US personal number
        "+17005550100",
        "+16175550100",  # US fixed line or mobile
        "+79095550100",  # RU mobile
        "+78005550100",  # RU toll free
        "+448005550100",  # GB toll free
        "+449095550100",  # GB premium
        "+447005550100",  # GB personal
        "+445605550100",  # GB VoIP
        "+447624123456",  # IM, sharing +44
    ]
    for code, digits in (("1", 10), ("7", 10), ("44", 10), ("61", 9), ("39", 10), ("47", 8)):
        for _ in range(1500):
            first = rng.choice("123456789")
            rest = "".join(rng.choice("0123456789") for _ in range(digits - 1))
            samples.append(f"+{code}{first}{rest}")
    valid = 0
    for raw in samples:
        number = phonenumbers.parse(raw, "US")
        expected = phonenumbers.is_valid_number(number)
        assert _is_valid(number) == expected, raw
        valid += expected
    assert 1000 < valid < len(samples) - 1000
