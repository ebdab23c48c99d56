"""The normalized event: the contract between channel adapters and the timeline.

Every adapter in ``channels/`` turns a provider payload into a list of :class:`Event`
values; ``timeline.ingest`` resolves who they concern, stores them idempotently on
``(channel, external_id)`` and publishes them. Nothing here does I/O.

An event names the customer it concerns either directly (``customer_id``, for notes and
agents' sends) or through its participants: the customer is the *sender* of an inbound
event and the *recipient* of an outbound one (``Event.counterpart``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


class Channel(enum.StrEnum):
    """Where an event came from or went to."""

    VOICE = "voice"
    SMS = "sms"
    EMAIL = "email"
    CALENDAR = "calendar"
    SOCIAL = "social"
    NOTE = "note"
    DOCUMENT = "document"
    SURVEY = "survey"
    REVIEW = "review"


class Kind(enum.StrEnum):
    """What sort of thing happened."""

    MESSAGE = "message"
    CALL = "call"
    MEETING = "meeting"
    NOTE = "note"
    DOCUMENT = "document"
    SURVEY = "survey"
    REVIEW = "review"
    CONSENT = "consent"
    SYSTEM = "system"


class Direction(enum.StrEnum):
    """Who started it: the customer (inbound), us (outbound) or nobody outside (internal)."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"
    INTERNAL = "internal"


class IdentityKind(enum.StrEnum):
    """The kinds of identity a customer can have; ``(kind, value)`` is unique."""

    PHONE = "phone"
    EMAIL = "email"
    HANDLE = "handle"


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """One way to reach a customer.

    Stored values are normalized (``timeline.identity``): E.164 for phones,
    ``local@domain`` with a case-folded domain for emails, and ``network:id`` for social
    handles (``telegram:12345``). Adapters may hand over what the provider gave
    (``tel:+1 415...``, ``Jane@Example.COM``); ingestion normalizes it.
    """

    kind: IdentityKind
    value: str

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True, slots=True)
class Attachment:
    """A file that came with an event.

    Either ``content`` holds the bytes (parsed from a MIME part) or ``url`` says where a
    worker fetches them with the provider's credentials (Twilio MMS media).
    """

    filename: str
    content_type: str
    content: bytes | None = None
    url: str | None = None
    content_id: str | None = None


def utcnow() -> datetime:
    """The current time, UTC-aware."""
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """Something that happened with a customer, on one channel.

    ``external_id`` is the provider's id (MessageSid, CallSid, Message-ID, ...); with
    ``channel`` it is unique, so ingesting the same thing twice is a no-op. An event that
    repeats a known ``(channel, external_id)`` with a new ``status`` moves the stored
    status forward only (``timeline.status``). ``thread_key`` groups an email thread or a
    conversation; ``data`` holds channel-specific details (duration, error code, ...).
    """

    channel: Channel
    kind: Kind
    direction: Direction
    occurred_at: datetime
    external_id: str | None = None
    status: str | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    thread_key: str | None = None
    sender: Identity | None = None
    recipient: Identity | None = None
    attachments: tuple[Attachment, ...] = ()
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    customer_id: str | None = None
    #: A status update for an event we already hold, never a new event of its own
    #: (a delivery callback for an unknown MessageSid is logged, not stored).
    update_only: bool = False

    def __post_init__(self) -> None:
        if self.occurred_at.tzinfo is None:
            raise ValueError("occurred_at must be timezone-aware")
        if self.occurred_at.utcoffset() != UTC.utcoffset(None):
            object.__setattr__(self, "occurred_at", self.occurred_at.astimezone(UTC))

    @property
    def counterpart(self) -> Identity | None:
        """The customer's side of the event: the sender if inbound, else the recipient."""
        if self.direction is Direction.INBOUND:
            return self.sender
        return self.recipient
