"""Twilio error codes to retry outcomes (RELIABILITY 7), and the errors' texts."""

from __future__ import annotations

import pytest

from channels.twilio.errors import (
    ApiError,
    Outcome,
    PayloadError,
    TransportError,
    TwilioError,
    classify,
)


@pytest.mark.parametrize(
    ("code", "http_status", "outcome"),
    [
        (21610, 400, Outcome.OPTED_OUT),
        (21610, None, Outcome.OPTED_OUT),
        (30005, None, Outcome.PERMANENT),
        (30007, None, Outcome.PERMANENT),
        (30004, None, Outcome.PERMANENT),
        (30006, None, Outcome.PERMANENT),
        (30003, None, Outcome.RETRY_ONCE),
        (30008, None, Outcome.RETRY_ONCE),
        (30001, None, Outcome.BACK_OFF),
        (21611, 400, Outcome.BACK_OFF),
        (20429, 429, Outcome.BACK_OFF),
        (None, 429, Outcome.BACK_OFF),
        (20500, 500, Outcome.UNKNOWN),
        (None, 503, Outcome.UNKNOWN),
        (None, None, Outcome.UNKNOWN),
        (21211, 400, Outcome.PERMANENT),
        (20003, 401, Outcome.PERMANENT),
        (30999, None, Outcome.PERMANENT),
    ],
)
def test_classify(code: int | None, http_status: int | None, outcome: Outcome) -> None:
    assert classify(code, http_status) is outcome


def test_only_transient_outcomes_may_retry() -> None:
    assert {o for o in Outcome if o.may_retry} == {Outcome.RETRY_ONCE, Outcome.BACK_OFF}


def test_api_error_masks_phone_numbers_in_its_text() -> None:
    error = ApiError(21211, 400, "Invalid 'To' Phone Number: +1 (415) 555-0100")
    assert str(error) == "Twilio error 21211 (HTTP 400): Invalid 'To' Phone Number: [number]"
    assert error.twilio_message.endswith("555-0100")
    assert error.outcome is Outcome.PERMANENT


def test_transport_error_has_an_unknown_outcome() -> None:
    error = TransportError("ClientConnectorError: refused")
    assert isinstance(error, ApiError) and isinstance(error, TwilioError)
    assert (error.code, error.http_status, error.outcome) == (None, None, Outcome.UNKNOWN)


def test_payload_error_names_its_field() -> None:
    error = PayloadError("NumMedia", "expected a whole number")
    assert isinstance(error, TwilioError)
    assert (error.field, error.message, str(error)) == (
        "NumMedia",
        "expected a whole number",
        "NumMedia: expected a whole number",
    )
