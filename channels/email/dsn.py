"""Delivery status notifications (bounces): RFC 3464 reports, RFC 3463 status codes.

A DSN is a ``multipart/report; report-type=delivery-status`` (RFC 6522): a human-readable
part, a ``message/delivery-status`` part (one block of per-message fields, then one block
per recipient: ``Final-Recipient``, ``Action``, ``Status``, ``Diagnostic-Code``) and the
returned message or its headers (``message/rfc822`` or ``text/rfc822-headers``), whose
``Message-ID`` names the message we sent. Status class 5 is permanent (a hard bounce:
stop mailing that address), class 4 transient (soft: the server still tries), class 2 a
success (``delivered``/``relayed``/``expanded``, not a failure).
"""

from __future__ import annotations

import dataclasses
import re
from email import policy
from email.message import Message
from email.parser import BytesParser, HeaderParser

from channels.email.mime import clean_text, decode_bytes, message_ids, raw_header

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE = re.compile(r"\b([245])\d\d\b")
_DELIVERY_STATUS = ("message/delivery-status", "message/global-delivery-status")
_RETURNED = ("message/rfc822", "message/global")
_RETURNED_HEADERS = ("text/rfc822-headers", "message/rfc822-headers")


@dataclasses.dataclass(frozen=True, slots=True)
class RecipientStatus:
    """What happened to one recipient (RFC 3464 2.3)."""

    address: str | None
    #: ``failed``, ``delayed``, ``delivered``, ``relayed`` or ``expanded``.
    action: str
    #: The RFC 3463 status code, e.g. ``5.1.1``.
    status: str
    diagnostic: str | None = None

    @property
    def hard(self) -> bool:
        """A permanent failure (class 5): the address must not be mailed again as is."""
        return self.status.startswith("5")

    @property
    def failed(self) -> bool:
        """Not delivered (yet): a permanent or a transient failure."""
        return self.status[:1] in ("4", "5")


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryReport:
    """A parsed DSN: which message of ours did not reach whom, and why."""

    #: The Message-ID of the message we sent, if the report returned it.
    original_message_id: str | None
    recipients: tuple[RecipientStatus, ...]
    reporting_mta: str | None = None

    @property
    def failed(self) -> tuple[RecipientStatus, ...]:
        """The recipients the message did not reach (hard and soft)."""
        return tuple(r for r in self.recipients if r.failed)

    @property
    def hard(self) -> bool:
        """Whether any recipient failed permanently (5.x.x)."""
        return any(r.hard for r in self.recipients)

    @property
    def status(self) -> str | None:
        """The status code of the first failed recipient (or of the first at all)."""
        chosen = self.failed or self.recipients
        return chosen[0].status if chosen else None

    def as_data(self) -> dict[str, object]:
        """A JSON-ready summary for ``Event.data["dsn"]``."""
        return {
            "original_message_id": self.original_message_id,
            "reporting_mta": self.reporting_mta,
            "status": self.status,
            "hard": self.hard,
            "recipients": [
                {
                    "address": r.address,
                    "action": r.action,
                    "status": r.status,
                    "hard": r.hard,
                    "diagnostic": r.diagnostic,
                }
                for r in self.recipients
            ],
        }


def is_delivery_report(msg: Message) -> bool:
    """Whether ``msg`` is a DSN: multipart/report with report-type delivery-status.

    Some MTAs omit ``report-type``; a multipart/report holding a delivery-status part
    counts too.
    """
    try:
        if msg.get_content_type() != "multipart/report":
            return False
        report_type = str(msg.get_param("report-type", "") or "").lower()
        if report_type in ("delivery-status", "global-delivery-status"):
            return True
        payload = msg.get_payload()
        return isinstance(payload, list) and any(
            isinstance(p, Message) and p.get_content_type() in _DELIVERY_STATUS for p in payload
        )
    except Exception:  # a broken Content-Type is simply not a report
        return False


def _field_value(value: str | None) -> str | None:
    """The part of a typed field after ``type;`` (``rfc822; a@b.c`` -> ``a@b.c``)."""
    if value is None:
        return None
    value = clean_text(value).strip()
    if ";" in value:
        value = value.split(";", 1)[1].strip()
    return value.strip("<>").strip() or None


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    # message/global-delivery-status or a report the parser kept as text: parse blocks.
    text = payload if isinstance(payload, str) else ""
    if part.get("Content-Transfer-Encoding"):
        raw = part.get_payload(decode=True)
        if isinstance(raw, bytes):
            text = decode_bytes(raw, "utf-8", [])
    blocks = re.split(r"\r?\n\s*\r?\n", text.strip())
    return [HeaderParser(policy=policy.compat32).parsestr(b) for b in blocks if b.strip()]


def _recipient(block: Message) -> RecipientStatus | None:
    address = _field_value(raw_header(block, "Final-Recipient")) or _field_value(
        raw_header(block, "Original-Recipient")
    )
    action = (raw_header(block, "Action") or "").strip().lower()
    diagnostic = _field_value(raw_header(block, "Diagnostic-Code"))
    status_field = raw_header(block, "Status") or ""
    match = _STATUS.search(status_field) or _STATUS.search(diagnostic or "")
    if match:
        status = ".".join(match.groups())
    else:
        code = _SMTP_CODE.search(diagnostic or "")
        if code:
            status = f"{code.group(1)}.0.0"
        elif action in ("failed", "delayed"):
            status = "5.0.0" if action == "failed" else "4.0.0"
        elif action:
            status = "2.0.0"
        else:
            return None
    if not action:
        action = {"5": "failed", "4": "delayed"}.get(status[0], "delivered")
    return RecipientStatus(address, action, status, diagnostic)


def _original_id(msg: Message) -> str | None:
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in _RETURNED:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                ids = message_ids(raw_header(inner[0], "Message-ID"))
                if ids:
                    return ids[0]
        elif ctype in _RETURNED_HEADERS:
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                headers = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
                ids = message_ids(raw_header(headers, "Message-ID"))
                if ids:
                    return ids[0]
    return None


def parse_dsn(msg: Message | bytes, warnings: list[str] | None = None) -> DeliveryReport | None:
    """Read a delivery status notification (RFC 3464); ``None`` if ``msg`` is not one.

    Gives the original Message-ID (from the returned message or its headers), every
    recipient's action and RFC 3463 status (class 5 hard, class 4 soft). A malformed
    report never raises: what could be read is returned and the rest noted in
    ``warnings``.
    """
    warnings = [] if warnings is None else warnings
    if isinstance(msg, bytes):
        msg = BytesParser(policy=policy.default).parsebytes(msg)
    if not is_delivery_report(msg):
        return None
    recipients: list[RecipientStatus] = []
    reporting_mta: str | None = None
    try:
        for part in msg.walk():
            if part.get_content_type() not in _DELIVERY_STATUS:
                continue
            blocks = _status_blocks(part)
            if blocks:
                reporting_mta = _field_value(raw_header(blocks[0], "Reporting-MTA"))
            for block in blocks:
                recipient = _recipient(block)
                if recipient is not None:
                    recipients.append(recipient)
            break
    except Exception as exc:
        warnings.append(f"unreadable delivery-status part ({type(exc).__name__})")
    if not recipients:
        warnings.append("delivery report without a readable recipient status")
    try:
        original = _original_id(msg)
    except Exception as exc:
        warnings.append(f"unreadable returned message ({type(exc).__name__})")
        original = None
    if original is None:
        warnings.append("delivery report without the original Message-ID")
    return DeliveryReport(original, tuple(recipients), reporting_mta)
