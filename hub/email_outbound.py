"""Queuing an outbound email: addresses, threading, a Message-ID made before sending.

The Message-ID is made here, stored as the event's ``external_id`` and in the outbox
row, before any SMTP DATA (RELIABILITY 17): a bounce or a reply that comes back refers
to it, and a resend after an unknown outcome reuses it, so receivers see one message.
A reply (``reply_to`` an email event) carries In-Reply-To and References and joins
that thread; its subject gets ``Re:``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from channels.email.compose import make_message_id, reply_subject
from config import Settings
from hub.sms_outbound import Refused
from timeline import consent, mailstore, outbox, store
from timeline.customers import require_active
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind, utcnow
from timeline.ingest import ingest_batch
from timeline.records import StoredEvent
from timeline.schema import documents, events, identities


async def recipient(conn: AsyncConnection, customer_id: str) -> str:
    """The address the customer last wrote from, else their first; Refused if none."""
    emails = list(
        (
            await conn.execute(
                sa.select(identities.c.value)
                .where(
                    identities.c.customer_id == customer_id,
                    identities.c.kind == IdentityKind.EMAIL.value,
                )
                .order_by(identities.c.created_at, identities.c.id)
            )
        ).scalars()
    )
    if not emails:
        raise Refused("no_email", "the customer has no email address")
    last = (
        await conn.execute(
            sa.select(events.c.sender)
            .where(
                events.c.customer_id == customer_id,
                events.c.channel == Channel.EMAIL.value,
                events.c.direction == Direction.INBOUND.value,
                events.c.kind == Kind.MESSAGE.value,
            )
            .order_by(events.c.occurred_at.desc(), events.c.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    return str(last) if last in emails else emails[0]


async def queue_email(
    conn: AsyncConnection,
    settings: Settings,
    *,
    customer_id: str,
    text: str,
    subject: str | None,
    html: str | None = None,
    reply_to: str | None = None,
    attachments: list[str] | None = None,
    purpose: str = consent.TRANSACTIONAL,
    author: str | None = None,
) -> StoredEvent:
    """Write the queued email event and its outbox row; Refused if it may not be sent."""
    assert settings.smtp_from
    await require_active(conn, customer_id)
    objection = await consent.objection(conn, customer_id, Channel.EMAIL.value, purpose)
    if objection is not None:
        raise Refused(
            "opted_out", f"the customer opted out of email ({purpose}) on {objection['since']}"
        )
    to = await recipient(conn, customer_id)
    bounced = await mailstore.undeliverable(conn, to.lower())
    if bounced is not None:
        raise Refused(
            "bounced",
            f"mail to this address bounced ({bounced['status']}) on {bounced['since']}",
        )
    references: list[str] = []
    in_reply_to = None
    thread = None
    if reply_to:
        parent = await store.get_event(conn, reply_to)
        if parent.channel != Channel.EMAIL.value or not parent.external_id:
            raise Refused("bad_reply_to", "reply_to must be an email event of this customer")
        if parent.customer_id != customer_id:
            raise Refused("bad_reply_to", "reply_to must be an email event of this customer")
        in_reply_to = parent.external_id
        # RFC 5322 3.6.4: the parent's References, else its In-Reply-To, then the parent.
        ancestors = list(parent.data.get("references") or [])
        if not ancestors and parent.data.get("in_reply_to"):
            ancestors = [str(parent.data["in_reply_to"])]
        references = [*ancestors, parent.external_id]
        subject = reply_subject(subject or parent.subject or "")
        thread = parent.thread_key or parent.external_id
    if not subject:
        raise Refused("no_subject", "an email needs a subject (or reply_to)")
    doc_ids = list(attachments or [])
    if doc_ids:
        owned = set(
            (
                await conn.execute(
                    sa.select(documents.c.id).where(
                        documents.c.id.in_(doc_ids),
                        documents.c.customer_id == customer_id,
                        documents.c.sha256.is_not(None),
                    )
                )
            ).scalars()
        )
        missing = [d for d in doc_ids if d not in owned]
        if missing:
            raise Refused("bad_attachment", f"no stored document {missing[0]} of this customer")
    sender = settings.smtp_from
    domain = sender.split("<")[-1].rstrip(">").rsplit("@", 1)[-1]
    message_id = make_message_id(domain)
    thread_key = thread or message_id
    event = Event(
        channel=Channel.EMAIL,
        kind=Kind.MESSAGE,
        direction=Direction.OUTBOUND,
        occurred_at=utcnow(),
        external_id=message_id,
        status="queued",
        subject=subject,
        text=text,
        html=html,
        thread_key=thread_key,
        sender=Identity(IdentityKind.EMAIL, sender.split("<")[-1].rstrip(">").strip()),
        recipient=Identity(IdentityKind.EMAIL, to),
        customer_id=customer_id,
        data={
            "purpose": purpose,
            "in_reply_to": in_reply_to,
            "references": references,
            **({"author": author} if author else {}),
        },
    )
    result = await ingest_batch(conn, [event], region=settings.default_region)
    stored = result.outcomes[0].event
    assert stored is not None
    await mailstore.remember_thread(conn, thread_key, [message_id], None)
    await outbox.enqueue(
        conn,
        event_id=stored.id,
        channel=Channel.EMAIL.value,
        payload={
            "from": sender,
            "to": to,
            "message_id": message_id,
            "in_reply_to": in_reply_to,
            "references": references,
            "attachments": doc_ids,
        },
    )
    return stored
