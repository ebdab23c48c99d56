"""What the store hands back: stored events, customers and documents, ready for JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, as the contract's JSON shows."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the timeline holds it (``to_json`` is the contract's event JSON)."""

    id: str
    customer_id: str
    channel: str
    kind: str
    direction: str
    occurred_at: datetime
    status: str | None
    subject: str | None
    text: str | None
    html: str | None
    thread_key: str | None
    external_id: str | None
    sender: str | None
    recipient: str | None
    attachments: list[dict[str, Any]]
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> StoredEvent:
        """Build from a row of the events table."""
        return cls(
            id=row["id"],
            customer_id=row["customer_id"],
            channel=row["channel"],
            kind=row["kind"],
            direction=row["direction"],
            occurred_at=row["occurred_at"],
            status=row["status"],
            subject=row["subject"],
            text=row["text"],
            html=row["html"],
            thread_key=row["thread_key"],
            external_id=row["external_id"],
            sender=row["sender"],
            recipient=row["recipient"],
            attachments=row["attachments"] or [],
            data=row["data"] or {},
        )

    def to_json(self) -> dict[str, Any]:
        """The event JSON of CONTRACT.md."""
        return {
            "id": self.id,
            "customer_id": self.customer_id,
            "channel": self.channel,
            "kind": self.kind,
            "direction": self.direction,
            "occurred_at": iso(self.occurred_at),
            "status": self.status,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "thread_id": self.thread_key,
            "external_id": self.external_id,
            "from": self.sender,
            "to": self.recipient,
            "attachments": [{**a, "url": f"/api/v1/documents/{a['id']}"} for a in self.attachments],
            "data": self.data,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    """A file on a customer's profile (uploaded, or an event's attachment)."""

    id: str
    customer_id: str
    event_id: str | None
    filename: str
    content_type: str
    size: int
    sha256: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Document:
        """Build from a row of the documents table."""
        return cls(
            id=row["id"],
            customer_id=row["customer_id"],
            event_id=row["event_id"],
            filename=row["filename"],
            content_type=row["content_type"],
            size=row["size"],
            sha256=row["sha256"],
            created_at=row["created_at"],
        )

    def to_json(self) -> dict[str, Any]:
        """The document JSON (``url`` downloads it with the agent's token)."""
        return {
            "id": self.id,
            "customer_id": self.customer_id,
            "event_id": self.event_id,
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
            "created_at": iso(self.created_at),
            "url": f"/api/v1/documents/{self.id}",
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Customer:
    """A customer with identities, consent and counts."""

    id: str
    name: str | None
    timezone: str | None
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    merged_into: str | None
    erased_at: datetime | None
    phones: list[str]
    emails: list[str]
    handles: list[dict[str, str]]
    consent: list[dict[str, Any]]
    counts: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """The customer JSON of the API."""
        return {
            "id": self.id,
            "name": self.name,
            "timezone": self.timezone,
            "attributes": self.attributes,
            "phones": self.phones,
            "emails": self.emails,
            "handles": self.handles,
            "consent": self.consent,
            "counts": self.counts,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "merged_into": self.merged_into,
            "erased_at": iso(self.erased_at),
        }


def from_iso(value: str) -> datetime:
    """Parse what :func:`iso` wrote."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
