"""Request and response bodies of the agent API (pydantic models).

Request models validate input (unknown fields are refused, so a typo is an error, not
silently ignored). Response models describe the JSON the handlers build from
``timeline.records``; the OpenAPI schema is generated from both, and the API tests check
real answers against it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Handle(_In):
    """A social network account."""

    network: Literal["telegram", "whatsapp", "messenger", "instagram"]
    id: str = Field(min_length=1, max_length=128)


class CustomerIn(_In):
    """A new customer."""

    name: str | None = Field(default=None, max_length=200)
    phones: list[str] = Field(default_factory=list, max_length=20)
    emails: list[str] = Field(default_factory=list, max_length=20)
    handles: list[Handle] = Field(default_factory=list, max_length=20)
    timezone: str | None = Field(default=None, max_length=64)
    attributes: dict[str, Any] = Field(default_factory=dict)


class IdentitySet(_In):
    """Identities to add or remove."""

    phones: list[str] = Field(default_factory=list, max_length=20)
    emails: list[str] = Field(default_factory=list, max_length=20)
    handles: list[Handle] = Field(default_factory=list, max_length=20)


class CustomerPatch(_In):
    """Changes to a customer; ``attributes`` is a JSON merge patch (null deletes a key)."""

    name: str | None = Field(default=None, max_length=200)
    timezone: str | None = Field(default=None, max_length=64)
    attributes: dict[str, Any] | None = None
    add: IdentitySet | None = None
    remove: IdentitySet | None = None
    teams: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        default=None,
        max_length=20,
        description="replaces the customer's teams (supervisor or above; [] unassigns)",
    )


class MergeIn(_In):
    """The customer to merge into this one."""

    other_id: str = Field(min_length=1, max_length=64)


class NoteIn(_In):
    """An internal note."""

    text: str = Field(min_length=1, max_length=20_000)


# -- answers


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str
    message: str
    field: str | None = None


class Error(BaseModel):
    """Every error answer."""

    error: ErrorDetail


class HandleOut(BaseModel):
    """A social network account."""

    network: str
    id: str


class ConsentOut(BaseModel):
    """Consent on one channel for one purpose."""

    channel: str
    purpose: str
    state: str
    updated_at: str


class CustomerOut(BaseModel):
    """A customer with identities, consent and event counts per channel."""

    id: str
    name: str | None
    timezone: str | None
    attributes: dict[str, Any]
    phones: list[str]
    emails: list[str]
    handles: list[HandleOut]
    consent: list[ConsentOut]
    counts: dict[str, int]
    created_at: str
    updated_at: str
    merged_into: str | None
    erased_at: str | None
    teams: list[str] | None = Field(
        default=None, description="the customer's teams (in the answer to a PATCH of teams)"
    )


class CustomerList(BaseModel):
    """A page of customers."""

    items: list[CustomerOut]
    next: str | None


class AttachmentOut(BaseModel):
    """A file that came with an event."""

    id: str
    filename: str
    content_type: str
    size: int
    url: str


class EventOut(BaseModel):
    """An event on the timeline (CONTRACT.md, "An event in JSON")."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    customer_id: str
    channel: str
    kind: str
    direction: str
    occurred_at: str
    status: str | None
    subject: str | None
    text: str | None
    html: str | None
    thread_id: str | None
    external_id: str | None
    from_: str | None = Field(alias="from")
    to: str | None
    attachments: list[AttachmentOut]
    data: dict[str, Any]


class EventPage(BaseModel):
    """A page of a timeline, newest first."""

    items: list[EventOut]
    next: str | None


class DocumentOut(BaseModel):
    """A document on a customer's profile."""

    id: str
    customer_id: str
    event_id: str | None
    filename: str
    content_type: str
    size: int
    sha256: str | None
    created_at: str
    url: str


class DocumentCreated(BaseModel):
    """An uploaded document and its timeline event."""

    document: DocumentOut
    event: EventOut


class MergeOut(BaseModel):
    """A merge of two customers."""

    id: str
    target_id: str
    other_id: str
    actor: str | None
    created_at: str
    undone_at: str | None
    moved: dict[str, int]


class MergeList(BaseModel):
    """Merges into or out of a customer."""

    items: list[MergeOut]
    next: str | None


class MergeResult(BaseModel):
    """The merge that was made and the customer as it is now."""

    merge: MergeOut
    customer: CustomerOut


class UnmergeResult(BaseModel):
    """Both customers as they are after undoing a merge."""

    target: CustomerOut
    other: CustomerOut


class OutboxOut(BaseModel):
    """An outbound message waiting or sent."""

    id: str
    event_id: str
    channel: str
    state: str
    created_at: str


class ExportOut(BaseModel):
    """Everything held about a customer (GDPR Art. 15)."""

    exported_at: str
    customer: CustomerOut
    events: list[EventOut]
    documents: list[DocumentOut]
    outbox: list[OutboxOut]
    merges: list[MergeOut]


class Erased(BaseModel):
    """What is left of an erased customer: a tombstone."""

    id: str
    erased_at: str


class Health(BaseModel):
    """The hub answers and its database too."""

    status: Literal["ok"]


class DocumentList(BaseModel):
    """A customer's documents."""

    items: list[DocumentOut]
    next: str | None


class MessageIn(_In):
    """An outbound message to a customer."""

    customer_id: str = Field(min_length=1, max_length=64)
    channel: Literal["sms", "email"]
    text: str = Field(min_length=1, max_length=100_000)
    subject: str | None = Field(default=None, max_length=998)
    html: str | None = Field(default=None, max_length=1_000_000)
    reply_to: str | None = Field(default=None, max_length=64)
    purpose: Literal["transactional", "marketing"] = "transactional"
    attachments: list[str] = Field(default_factory=list, max_length=20)


class CallIn(_In):
    """A click-to-call: the agent's phone rings first, then the customer's."""

    customer_id: str = Field(min_length=1, max_length=64)
    agent_phone: str | None = Field(default=None, min_length=3, max_length=32)


class CallOut(BaseModel):
    """A call ringing or in progress (a screen pop without its timeline)."""

    model_config = ConfigDict(populate_by_name=True)

    call_id: str
    external_id: str | None
    state: Literal["ringing", "in-progress", "completed"]
    status: str | None
    direction: str
    from_: str | None = Field(alias="from")
    to: str | None
    started_at: str
    answered_by: str | None
    missed: bool
    customer: CustomerOut | None


class CallList(BaseModel):
    """Calls ringing or in progress, oldest first."""

    items: list[CallOut]
    next: str | None
