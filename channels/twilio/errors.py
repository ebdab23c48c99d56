"""Errors of the Twilio channel, and what a Twilio error code means for a retry.

The tree::

    TwilioError                         anything this package raises on purpose
    ├── PayloadError(field, message)    a webhook form is malformed: answer 400, store nothing
    └── ApiError(code, http_status)     the REST API refused the request (code from its
        │                               JSON error body, e.g. 21610, and the HTTP status)
        └── TransportError              no HTTP answer at all (refused, reset, timed out):
                                        whether Twilio acted on a create is unknown

Provider library errors (``TwilioRestException``, aiohttp's) never leave ``client.py``
unwrapped: they become an :class:`ApiError` with ``raise ... from exc``.

:func:`classify` turns an error code (from an API error or from the ``ErrorCode`` of a
status callback) and an HTTP status into an :class:`Outcome` that tells the outbox worker
what to do next. Codes: https://www.twilio.com/docs/api/errors
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "ApiError",
    "Outcome",
    "PayloadError",
    "TransportError",
    "TwilioError",
    "classify",
]

#: Numbers inside Twilio's error messages ("The 'To' number +1415... is not valid") are
#: masked in ``str(error)`` so that logging an error never logs a phone number.
_NUMBER = re.compile(r"\+?\d[\d ().-]{4,}\d")


class TwilioError(Exception):
    """Base of every error this package raises on purpose."""


class PayloadError(TwilioError):
    """A webhook payload lacks a field or holds a malformed value (answer 400).

    ``field`` names the form field (``From``, ``NumMedia``, ``MediaUrl1``), ``message``
    says what is wrong with it, without echoing message bodies or phone numbers.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Outcome(enum.StrEnum):
    """What a failed send means for the outbox (RELIABILITY.md, Twilio, item 7)."""

    #: The recipient texted STOP to this sender (21610): record the opt-out, never retry.
    OPTED_OUT = "opted_out"
    #: The message cannot be delivered (unknown number, landline, blocked, filtered, a
    #: request Twilio rejects as invalid): mark it failed, never retry.
    PERMANENT = "permanent"
    #: The handset was unreachable (30003) or the carrier gave no reason (30008): one
    #: more attempt after a delay (minutes, not seconds), then permanent.
    RETRY_ONCE = "retry_once"
    #: Too fast (queue overflow 30001, rate 21611/14107/20429, HTTP 429): retry with
    #: exponential backoff and slow the sending number down.
    BACK_OFF = "back_off"
    #: No answer or a server error: Twilio may have accepted the message. Settle by looking
    #: it up (fetch or list), never by a blind resend.
    UNKNOWN = "unknown"

    @property
    def may_retry(self) -> bool:
        """Whether another attempt is allowed at all (after the fitting delay)."""
        return self in (Outcome.RETRY_ONCE, Outcome.BACK_OFF)


_OPTED_OUT = frozenset({21610})
_BACK_OFF = frozenset({30001, 21611, 14107, 20429})
_RETRY_ONCE = frozenset({30003, 30008})
_PERMANENT = frozenset({30004, 30005, 30006, 30007})


def classify(code: int | None, http_status: int | None) -> Outcome:
    """Map a Twilio error code and/or HTTP status to an :class:`Outcome`.

    ``code`` is Twilio's error code (https://www.twilio.com/docs/api/errors) from a REST
    error body or from a status callback's ``ErrorCode``; ``http_status`` is the REST
    answer's status, or None for a callback or when no answer came. Unknown ``3xxxx``
    delivery codes and other 4xx answers are permanent: a resend would fail the same way.
    """
    if code in _OPTED_OUT:
        return Outcome.OPTED_OUT
    if code in _BACK_OFF or http_status == 429:
        return Outcome.BACK_OFF
    if code in _RETRY_ONCE:
        return Outcome.RETRY_ONCE
    if code in _PERMANENT:
        return Outcome.PERMANENT
    if http_status is not None and http_status >= 500:
        return Outcome.UNKNOWN
    if code is None and http_status is None:
        return Outcome.UNKNOWN
    return Outcome.PERMANENT


class ApiError(TwilioError):
    """The Twilio REST API answered with an error (or, as :class:`TransportError`, not at all).

    ``code`` is Twilio's error code (None when the body had none), ``http_status`` the HTTP
    status (None without an answer), ``twilio_message`` Twilio's own text (it may contain
    the phone number: log it at DEBUG only), ``more_info`` the error's doc link.
    """

    def __init__(
        self,
        code: int | None,
        http_status: int | None,
        twilio_message: str = "",
        more_info: str | None = None,
    ) -> None:
        self.code = code
        self.http_status = http_status
        self.twilio_message = twilio_message
        self.more_info = more_info
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = ["Twilio error"]
        if self.code is not None:
            parts.append(str(self.code))
        if self.http_status is not None:
            parts.append(f"(HTTP {self.http_status})")
        text = _NUMBER.sub("[number]", self.twilio_message).strip()
        described = " ".join(parts)
        return f"{described}: {text}" if text else described

    @property
    def outcome(self) -> Outcome:
        """What this error means for a retry (:func:`classify`)."""
        return classify(self.code, self.http_status)


class TransportError(ApiError):
    """No HTTP answer from Twilio (connection refused or reset, timeout)."""

    def __init__(self, twilio_message: str = "") -> None:
        super().__init__(None, None, twilio_message)
