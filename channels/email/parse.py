"""Raw email (RFC 5322, MIME) to a timeline :class:`~timeline.events.Event`. Pure: no I/O.

:func:`parse_message` never raises: a malformed message gives what could be read, with
``warnings`` (short notes that name no address and quote no body, so they may be logged).
The decisions, which ingestion and the outbox rely on:

- ``external_id`` is the Message-ID with its angle brackets, case kept (ids compare
  case-sensitively). Without one, a stable id is made from the SHA-256 of the raw bytes,
  ``<sha256hex@commhub.invalid>`` (RFC 2606 ``.invalid``), and
  ``data["synthesized_message_id"]`` is set. Our outgoing mail has its Message-ID stored
  before sending (``compose``), so its copy in the Sent folder is the same event.
- ``direction`` is outbound when From is one of ``our_addresses`` (case-insensitive; an
  entry ``@example.com`` means the whole domain) or the folder is the Sent folder, else
  inbound. ``sender``/``recipient`` are the From address and the customer's side
  (inbound: our address among To/Cc; outbound: the first To/Cc/Bcc that is not ours).
- ``occurred_at`` is the Date header; else the newest ``Received`` date; else
  ``received_at`` (the IMAP INTERNALDATE); else now. Each fallback is a warning.
- ``status`` is ``received`` (inbound) or ``sent`` (outbound).
- A delivery report (RFC 3464) is **not** a message from the customer: its event has
  ``kind=system``, ``direction=internal``, no sender (the mailer daemon is in
  ``data["from"]``) and the failed recipient as ``recipient`` (so it lands on that
  customer's timeline), ``status`` ``bounced`` (any 5.x.x) or ``delayed`` (4.x.x) and the
  report in ``data["dsn"]``. :meth:`ParsedEmail.events` adds an ``update_only`` event
  that moves the original message (its Message-ID) to that status.
- ``data["auto_submitted"]`` is true for RFC 3834 ``Auto-Submitted`` other than ``no``,
  ``Precedence: bulk/list/junk``, ``X-Autoreply``/``X-Autorespond``, a null
  ``Return-Path`` and delivery reports: automations must never answer those.
- ``thread_key`` is provisional (ids only, as if the store knew nothing); ingestion
  recomputes it from :attr:`ParsedEmail.thread` with ``threading.assign_thread``. A
  delivery report counts as a reply to the message that bounced, so it joins that thread.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.parser import BytesParser
from typing import Any

from channels.email.body import read_body
from channels.email.dsn import DeliveryReport, is_delivery_report, parse_dsn
from channels.email.mime import address_list, header_text, message_ids, raw_header
from channels.email.threading import ThreadRef, decide_thread
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind, utcnow

__all__ = [
    "DeliveryReport",
    "ParsedEmail",
    "is_ours",
    "parse_dsn",
    "parse_message",
    "parse_messages",
]

MAX_SUBJECT = 1000
_AUTO_PRECEDENCE = frozenset(("bulk", "list", "junk", "auto_reply"))
_PARSER = BytesParser(policy=policy.compat32)


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedEmail:
    """One parsed email: its event, its threading ids, its delivery report if a DSN."""

    event: Event
    thread: ThreadRef
    report: DeliveryReport | None = None
    warnings: tuple[str, ...] = ()

    @property
    def message_id(self) -> str:
        """The Message-ID (or the synthesized one): the event's ``external_id``."""
        return self.thread.message_id

    @property
    def auto_submitted(self) -> bool:
        """Whether a machine sent it: never answer it automatically (RFC 3834)."""
        return bool(self.event.data.get("auto_submitted"))

    def events(self) -> list[Event]:
        """The event, plus for a DSN the status update of the message that bounced."""
        events = [self.event]
        if self.report is not None and self.report.original_message_id and self.event.status:
            events.append(
                Event(
                    channel=Channel.EMAIL,
                    kind=Kind.MESSAGE,
                    direction=Direction.OUTBOUND,
                    occurred_at=self.event.occurred_at,
                    external_id=self.report.original_message_id,
                    status=self.event.status,
                    recipient=self.event.recipient,
                    data={"dsn": self.report.as_data()},
                    update_only=True,
                )
            )
        return events


def is_ours(address: str, our_addresses: Collection[str]) -> bool:
    """Whether ``address`` is one of ours; ``@domain`` entries match the whole domain."""
    folded = address.casefold()
    domain = "@" + folded.rpartition("@")[2]
    return any(o.casefold() in (folded, domain) for o in our_addresses)


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        # -0000 ("zone unknown", RFC 5322 3.3) parses naive: UTC is the best guess.
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _received_date(msg: Message) -> datetime | None:
    for key, value in msg.raw_items():
        if key.lower() == "received" and ";" in str(value):
            found = _date(" ".join(str(value).rpartition(";")[2].split()))
            if found is not None:
                return found
    return None


def _auto_submitted(msg: Message, is_report: bool) -> str | None:
    auto = (raw_header(msg, "Auto-Submitted") or "").split(";")[0].strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto[:40]}"
    precedence = (raw_header(msg, "Precedence") or "").strip().lower()
    if precedence in _AUTO_PRECEDENCE:
        return f"Precedence: {precedence}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        if raw_header(msg, name) is not None:
            return name
    if (raw_header(msg, "Return-Path") or "x").strip() in ("<>", ""):
        return "null Return-Path"
    if is_report:
        return "delivery report"
    return None


def _first(addresses: Iterable[str], want_ours: bool, ours: Collection[str]) -> str | None:
    return next((a for a in addresses if is_ours(a, ours) == want_ours), None)


def _email(address: str | None) -> Identity | None:
    return Identity(IdentityKind.EMAIL, address) if address else None


def synthetic_message_id(raw: bytes) -> str:
    """A stable id for a message without a Message-ID, whatever its line endings.

    IMAP servers store and return messages with CRLF (RFC 3501 2.3.4 literals), so the
    same message read from a file and from a server must hash alike.
    """
    canonical = raw.replace(b"\r\n", b"\n").rstrip(b"\n")
    return f"<{hashlib.sha256(canonical).hexdigest()}@commhub.invalid>"


def parse_message(
    raw: bytes,
    *,
    our_addresses: Collection[str],
    folder_is_sent: bool = False,
    received_at: datetime | None = None,
) -> ParsedEmail:
    """Parse one raw message into an email :class:`Event` (RFC 5322, RFC 2045-2049).

    Text and HTML are decoded (charsets and RFC 2047 words, wrong ones tolerated), every
    attachment (inline ``cid:`` images and nameless parts too) is kept with its bytes,
    and ``data`` holds the address lists, threading ids, the auto-submitted flag and
    the parse warnings. See the module docstring for the decisions. Never raises.
    """
    try:
        return _parse(raw, our_addresses, folder_is_sent, received_at)
    except Exception as exc:
        # Each step tolerates what real mail does; this is the net for what fuzzing
        # may still find: keep the message (raw bytes stay with the caller), flag it.
        warning = f"unparseable message ({type(exc).__name__})"
        message_id = synthetic_message_id(raw)
        direction = Direction.OUTBOUND if folder_is_sent else Direction.INBOUND
        event = Event(
            channel=Channel.EMAIL,
            kind=Kind.MESSAGE,
            direction=direction,
            occurred_at=received_at or utcnow(),
            external_id=message_id,
            status="sent" if folder_is_sent else "received",
            thread_key=message_id,
            data={"message_id": message_id, "warnings": [warning], "unparseable": True},
        )
        return ParsedEmail(event, ThreadRef(message_id), None, (warning,))


def _parse(
    raw: bytes,
    our_addresses: Collection[str],
    folder_is_sent: bool,
    received_at: datetime | None,
) -> ParsedEmail:
    warnings: list[str] = []
    try:
        # compat32: the plain tree, headers kept as received. policy.default builds a
        # headerregistry object at every header access (Content-Type is parsed again at
        # each get_content_type()), 6x slower over a mailbox; the readers in ``mime``
        # decode what is used (RFC 2047 words, charsets, address lists) themselves.
        msg: Message = _PARSER.parsebytes(raw)
    except Exception as exc:  # the feed parser is lenient; be safe anyway
        warnings.append(f"unparseable message ({type(exc).__name__})")
        msg = Message(policy=policy.compat32)
    if len(msg.defects) > 0:
        kinds = sorted({type(d).__name__ for d in msg.defects})
        warnings.append("MIME defects: " + ", ".join(kinds[:5]))

    ids = message_ids(raw_header(msg, "Message-ID"))
    synthesized = not ids
    message_id = ids[0] if ids else synthetic_message_id(raw)
    if synthesized:
        warnings.append("no Message-ID: synthesized from the content")
    in_reply_to = message_ids(raw_header(msg, "In-Reply-To"))
    references = message_ids(raw_header(msg, "References"))

    lists = {
        name: address_list(msg, name, warnings)
        for name in ("From", "Sender", "To", "Cc", "Bcc", "Reply-To")
    }
    names = {addr: display for pairs in lists.values() for display, addr in pairs if display}
    addrs = {name: [addr for _, addr in pairs] for name, pairs in lists.items()}
    from_addr = next(iter(addrs["From"] or addrs["Sender"]), None)
    if from_addr is None:
        warnings.append("no From address")

    subject = header_text(msg, "Subject", warnings) or None
    if subject is not None and len(subject) > MAX_SUBJECT:
        warnings.append(f"subject longer than {MAX_SUBJECT} characters: cut")
        subject = subject[:MAX_SUBJECT]

    occurred_at = _date(header_text(msg, "Date", warnings))
    if occurred_at is None:
        occurred_at = _received_date(msg) or received_at
        warnings.append("no usable Date header")
    if occurred_at is None:
        occurred_at = utcnow()

    is_report = is_delivery_report(msg)
    report = parse_dsn(msg, warnings) if is_report else None
    body = read_body(msg, warnings, report=is_report)
    auto_reason = _auto_submitted(msg, is_report)

    outbound = folder_is_sent or (from_addr is not None and is_ours(from_addr, our_addresses))
    to_cc = [*addrs["To"], *addrs["Cc"]]
    participants = frozenset(
        a.casefold() for a in (*addrs["From"], *to_cc) if not is_ours(a, our_addresses)
    )
    parent = in_reply_to[:1]
    if not parent and report is not None and report.original_message_id:
        parent = [report.original_message_id]  # a bounce sits in the thread it concerns
    thread = ThreadRef(
        message_id=message_id,
        in_reply_to=tuple(parent),
        references=tuple(references),
        subject=subject,
        participants=participants,
    )

    data: dict[str, Any] = {
        "message_id": message_id,
        "from": addrs["From"] or addrs["Sender"],
        "to": addrs["To"],
        "cc": addrs["Cc"],
        "reply_to": addrs["Reply-To"],
        "names": names,
        "in_reply_to": in_reply_to[0] if in_reply_to else None,
        "references": references,
        "auto_submitted": auto_reason is not None,
        "auto_submitted_reason": auto_reason,
        "warnings": warnings,
    }
    if addrs["Bcc"]:
        data["bcc"] = addrs["Bcc"]
    if synthesized:
        data["synthesized_message_id"] = True
    if body.text_from_html:
        data["text_from_html"] = True

    kind, status = Kind.MESSAGE, "received"
    sender = _email(from_addr)
    if report is not None:
        data["dsn"] = report.as_data()
        failed = report.failed
        kind, direction = Kind.SYSTEM, Direction.INTERNAL
        status = ("bounced" if report.hard else "delayed") if failed else "delivered"
        sender = None
        recipient = _email(failed[0].address if failed else None)
    elif outbound:
        direction, status = Direction.OUTBOUND, "sent"
        recipient = _email(
            _first([*to_cc, *addrs["Bcc"]], False, our_addresses) or next(iter(to_cc), None)
        )
    else:
        direction = Direction.INBOUND
        recipient = _email(_first(to_cc, True, our_addresses) or next(iter(to_cc), None))

    event = Event(
        channel=Channel.EMAIL,
        kind=kind,
        direction=direction,
        occurred_at=occurred_at,
        external_id=message_id,
        status=status,
        subject=subject,
        text=body.text,
        html=body.html,
        thread_key=decide_thread(thread, {}).key,
        sender=sender,
        recipient=recipient,
        attachments=tuple(body.attachments),
        data=data,
    )
    return ParsedEmail(event, thread, report, tuple(warnings))


def parse_messages(
    raws: Sequence[bytes], *, our_addresses: Collection[str], folder_is_sent: bool = False
) -> list[ParsedEmail]:
    """:func:`parse_message` for each of ``raws``: one call per worker process."""
    return [
        parse_message(raw, our_addresses=our_addresses, folder_is_sent=folder_is_sent)
        for raw in raws
    ]
