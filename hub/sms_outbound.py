"""Queuing an outbound SMS: pick the numbers, check consent, write event + outbox row.

The message goes from the number the customer last used with us (so a reply lands in
the same conversation on their phone), else from the first of ``TWILIO_NUMBERS``; to
the phone they last texted from, else their first phone. The queued event and its
outbox row are written in the caller's transaction: together or not at all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from channels.twilio.parse import thread_key
from config import Settings
from timeline import consent, outbox
from timeline.customers import require_active
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind, utcnow
from timeline.ingest import ingest_batch
from timeline.records import StoredEvent
from timeline.schema import events, identities


class Refused(Exception):
    """The message may not be sent; ``code`` and the message say why."""

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """Which of our numbers sends to which of the customer's."""

    from_: str
    to: str


async def route(conn: AsyncConnection, settings: Settings, customer_id: str) -> Route:
    """The numbers for a message to this customer; Refused if they have no phone."""
    phones = list(
        (
            await conn.execute(
                sa.select(identities.c.value)
                .where(
                    identities.c.customer_id == customer_id,
                    identities.c.kind == IdentityKind.PHONE.value,
                )
                .order_by(identities.c.created_at, identities.c.id)
            )
        ).scalars()
    )
    if not phones:
        raise Refused("no_phone", "the customer has no phone number")
    ours = settings.twilio_numbers
    last = (
        await conn.execute(
            sa.select(events.c.direction, events.c.sender, events.c.recipient)
            .where(
                events.c.customer_id == customer_id,
                events.c.channel == Channel.SMS.value,
                events.c.kind == Kind.MESSAGE.value,
            )
            .order_by(events.c.occurred_at.desc(), events.c.id.desc())
            .limit(1)
        )
    ).one_or_none()
    from_, to = ours[0], phones[0]
    if last is not None:
        our_side, their_side = (
            (last.recipient, last.sender)
            if last.direction == Direction.INBOUND.value
            else (last.sender, last.recipient)
        )
        if our_side in ours:
            from_ = our_side
        if their_side in phones:
            to = their_side
    return Route(from_, to)


async def queue_sms(
    conn: AsyncConnection,
    settings: Settings,
    *,
    customer_id: str,
    text: str,
    purpose: str = consent.TRANSACTIONAL,
    automated: bool = False,
    author: str | None = None,
    idempotency_key: str | None = None,
) -> StoredEvent:
    """Write the queued SMS event and its outbox row; Refused if it may not be sent.

    An agent's send to an opted-out customer is refused here (the API answers 409). An
    automated send is refused too; the sender worker checks again at send time, since
    consent may change while a message waits.
    """
    await require_active(conn, customer_id)
    objection = await consent.objection(conn, customer_id, Channel.SMS.value, purpose)
    if objection is not None:
        raise Refused(
            "opted_out",
            f"the customer opted out of SMS ({purpose}) on {objection['since']}",
            consent=objection,
        )
    numbers = await route(conn, settings, customer_id)
    event = Event(
        channel=Channel.SMS,
        kind=Kind.MESSAGE,
        direction=Direction.OUTBOUND,
        occurred_at=utcnow(),
        status="queued",
        text=text,
        thread_key=thread_key(numbers.from_, numbers.to),
        sender=Identity(IdentityKind.PHONE, numbers.from_),
        recipient=Identity(IdentityKind.PHONE, numbers.to),
        customer_id=customer_id,
        data={"purpose": purpose, "automated": automated, **({"author": author} if author else {})},
    )
    result = await ingest_batch(conn, [event], region=settings.default_region)
    stored = result.outcomes[0].event
    assert stored is not None
    await outbox.enqueue(
        conn,
        event_id=stored.id,
        channel=Channel.SMS.value,
        payload={
            "from": numbers.from_,
            "to": numbers.to,
            "body": text,
            "purpose": purpose,
            "automated": automated,
        },
        idempotency_key=idempotency_key,
    )
    return stored
