"""Pure parsers: Twilio SMS/MMS webhooks and Message resources to timeline events.

No I/O happens here. The hub verifies the signature first (``signature.verify``), then
hands the form to:

- :func:`parse_inbound_sms` for ``POST /webhooks/twilio/sms``
  (https://www.twilio.com/docs/messaging/guides/webhook-request);
- :func:`parse_status_callback` for ``POST /webhooks/twilio/sms/status``
  (https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks);
- :func:`event_from_message` for a Message resource fetched or listed by reconciliation.

A malformed form raises :class:`~channels.twilio.errors.PayloadError` (answer 400) and
nothing else. Twilio adds parameters without notice, so unknown fields are ignored.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

from channels.twilio.errors import PayloadError
from channels.twilio.forms import Form, form_items
from channels.twilio.records import MessageRecord
from timeline.events import (
    Attachment,
    Channel,
    Direction,
    Event,
    Identity,
    IdentityKind,
    Kind,
    utcnow,
)

__all__ = [
    "ConsentKeyword",
    "consent_keyword",
    "event_from_message",
    "parse_inbound_sms",
    "parse_status_callback",
    "thread_key",
]

ConsentKeyword: TypeAlias = Literal["opt_out", "opt_in", "help"]

#: Twilio's default opt-out/opt-in/help keywords, plus REVOKE and OPTOUT from the FCC's
#: list. https://help.twilio.com/articles/223134027
_KEYWORDS: dict[str, ConsentKeyword] = {
    **dict.fromkeys(
        ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"),
        "opt_out",
    ),
    **dict.fromkeys(("START", "UNSTOP", "YES"), "opt_in"),
    **dict.fromkeys(("HELP", "INFO"), "help"),
}

# E.164 numbers and short codes; "whatsapp:+1..." and the like belong to other channels.
_PHONE = re.compile(r"\+?[0-9]{3,15}")
_SID = re.compile(r"[A-Za-z0-9]{2,64}")
_STATUS = re.compile(r"[a-z_-]{1,32}")
#: Twilio sends at most 10 media per message; more is a forged or broken form.
_MAX_MEDIA = 10

_INBOUND_TEXT_DATA = (
    "AccountSid",
    "MessagingServiceSid",
    "FromCountry",
    "FromState",
    "FromCity",
    "FromZip",
    "ToCountry",
    "ToState",
    "ToCity",
    "ToZip",
)
_STATUS_TEXT_DATA = ("AccountSid", "MessagingServiceSid", "ErrorMessage", "RawDlrDoneDate")


def consent_keyword(text: str | None) -> ConsentKeyword | None:
    """The consent meaning of an inbound text, if it is exactly one keyword.

    Case and surrounding blanks do not matter (``" Stop "`` opts out); anything more
    (``"STOP PLEASE"``) is an ordinary message. Keywords as Twilio's Advanced Opt-Out:
    https://www.twilio.com/docs/messaging/tutorials/advanced-opt-out
    """
    if not text:
        return None
    return _KEYWORDS.get(text.strip().upper())


def thread_key(our_number: str, customer_number: str) -> str:
    """The conversation key of an SMS exchange between one of our numbers and a customer.

    The hub's outbound events must use the same key for replies to join the thread.
    """
    return f"sms:{our_number}:{customer_number}"


class _Fields:
    """First value per key, with typed, validated access that raises PayloadError."""

    def __init__(self, form: Form) -> None:
        self._values: dict[str, str] = {}
        for key, value in form_items(form):
            self._values.setdefault(key, value)

    def text(self, name: str) -> str | None:
        value = self._values.get(name)
        return value if value else None

    def require(self, name: str) -> str:
        value = self._values.get(name, "").strip()
        if not value:
            raise PayloadError(name, "missing")
        return value

    def phone(self, name: str) -> str:
        value = self.require(name)
        if not _PHONE.fullmatch(value):
            raise PayloadError(name, "not a phone number or short code")
        return value

    def sid(self, name: str) -> str:
        value = self.require(name)
        if not _SID.fullmatch(value):
            raise PayloadError(name, "not a Twilio SID")
        return value

    def integer(self, name: str) -> int | None:
        raw = self._values.get(name, "").strip()
        if not raw:
            return None
        if not raw.isascii() or not raw.isdigit():
            raise PayloadError(name, f"expected a whole number, got {raw[:20]!r}")
        return int(raw)

    def data(self, names: tuple[str, ...]) -> dict[str, Any]:
        return {name: value for name in names if (value := self.text(name)) is not None}


def _media(fields: _Fields) -> tuple[Attachment, ...]:
    count = fields.integer("NumMedia") or 0
    if count > _MAX_MEDIA:
        raise PayloadError("NumMedia", f"{count} is more than Twilio's {_MAX_MEDIA}")
    attachments = []
    for index in range(count):
        url_field = f"MediaUrl{index}"
        url = fields.text(url_field)
        if url is None:
            raise PayloadError(url_field, f"missing, but NumMedia is {count}")
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise PayloadError(url_field, "not an http(s) URL")
        content_type = fields.text(f"MediaContentType{index}") or "application/octet-stream"
        # Twilio gives no file name; the media SID (last path segment) is unique.
        stem = parts.path.rstrip("/").rsplit("/", 1)[-1] or f"media{index}"
        extension = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ""
        attachments.append(
            Attachment(filename=stem + extension, content_type=content_type, url=url)
        )
    return tuple(attachments)


def parse_inbound_sms(form: Form, *, received_at: datetime | None = None) -> list[Event]:
    """One inbound ``message`` event for an incoming SMS or MMS webhook.

    MMS media (``NumMedia``, ``MediaUrl{N}``, ``MediaContentType{N}``) become attachments
    with a ``url`` for a worker to fetch with the account's credentials. ``data`` holds
    ``NumSegments``, ``NumMedia``, the geographic fields, ``AccountSid``,
    ``MessagingServiceSid`` and, when the text is exactly a keyword, ``consent``
    (:func:`consent_keyword`): what it means for our other numbers is the hub's call.
    ``received_at`` (default: now) is when it arrived; Twilio's form carries no date.
    https://www.twilio.com/docs/messaging/guides/webhook-request
    """
    fields = _Fields(form)
    sid = fields.sid("MessageSid")
    sender = fields.phone("From")
    recipient = fields.phone("To")
    attachments = _media(fields)
    body = fields.text("Body")
    data = fields.data(_INBOUND_TEXT_DATA)
    data["NumMedia"] = len(attachments)
    segments = fields.integer("NumSegments")
    if segments is not None:
        data["NumSegments"] = segments
    keyword = consent_keyword(body)
    if keyword is not None:
        data["consent"] = keyword
    event = Event(
        channel=Channel.SMS,
        kind=Kind.MESSAGE,
        direction=Direction.INBOUND,
        occurred_at=received_at or utcnow(),
        external_id=sid,
        status="received",
        text=body,
        thread_key=thread_key(recipient, sender),
        sender=Identity(IdentityKind.PHONE, sender),
        recipient=Identity(IdentityKind.PHONE, recipient),
        attachments=attachments,
        data=data,
    )
    return [event]


def parse_status_callback(form: Form, *, received_at: datetime | None = None) -> list[Event]:
    """One ``update_only`` event moving an outbound message's status forward.

    The status is ``MessageStatus`` (``SmsStatus`` for old senders); ``data`` holds
    ``ErrorCode`` (an int: ``errors.classify(code, None)`` says what it means for a retry),
    ``ErrorMessage``, ``RawDlrDoneDate``, ``AccountSid`` and ``MessagingServiceSid`` when
    given. Callbacks arrive out of order; the timeline keeps the status forward-only.
    https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks
    """
    fields = _Fields(form)
    sid = fields.sid("MessageSid")
    status = (fields.text("MessageStatus") or fields.text("SmsStatus") or "").strip().lower()
    if not status:
        raise PayloadError("MessageStatus", "missing")
    if not _STATUS.fullmatch(status):
        raise PayloadError("MessageStatus", "not a status word")
    data = fields.data(_STATUS_TEXT_DATA)
    code = fields.integer("ErrorCode")
    if code is not None:
        data["ErrorCode"] = code
    sender = fields.text("From")
    recipient = fields.text("To")
    event = Event(
        channel=Channel.SMS,
        kind=Kind.MESSAGE,
        direction=Direction.OUTBOUND,
        occurred_at=received_at or utcnow(),
        external_id=sid,
        status=status,
        sender=Identity(IdentityKind.PHONE, sender) if sender else None,
        recipient=Identity(IdentityKind.PHONE, recipient) if recipient else None,
        data=data,
        update_only=True,
    )
    return [event]


def event_from_message(record: MessageRecord, *, now: datetime | None = None) -> Event:
    """The event a fetched or listed Message resource stands for (reconciliation).

    An inbound record is a full event (it repairs a missed webhook); an outbound one is
    an ``update_only`` status update for the message we sent. ``occurred_at`` is the
    record's ``date_sent``, else ``date_created``, else ``now``.
    https://www.twilio.com/docs/messaging/api/message-resource
    """
    inbound = record.direction == "inbound"
    data: dict[str, Any] = {}
    optional: Mapping[str, Any] = {
        "ErrorCode": record.error_code,
        "ErrorMessage": record.error_message,
        "NumSegments": record.num_segments,
        "NumMedia": record.num_media,
        "AccountSid": record.account_sid,
        "MessagingServiceSid": record.messaging_service_sid,
    }
    data.update({key: value for key, value in optional.items() if value is not None})
    ours, theirs = (record.to, record.from_) if inbound else (record.from_, record.to)
    return Event(
        channel=Channel.SMS,
        kind=Kind.MESSAGE,
        direction=Direction.INBOUND if inbound else Direction.OUTBOUND,
        occurred_at=record.date_sent or record.date_created or now or utcnow(),
        external_id=record.sid,
        status=record.status,
        text=record.body if inbound else None,
        thread_key=thread_key(ours, theirs) if ours and theirs else None,
        sender=Identity(IdentityKind.PHONE, record.from_) if record.from_ else None,
        recipient=Identity(IdentityKind.PHONE, record.to) if record.to else None,
        data=data,
        update_only=not inbound,
    )
