"""The data subject's rights: export everything (GDPR Art. 15) and erase it (Art. 17).

Erasure deletes identities, events (with bodies and raw data), documents, consent rows,
outbox rows and merge records of the customer, and keeps only a tombstone: the customer
row with its id, no name and ``erased_at``. The search index follows the events (FTS5
triggers, PostgreSQL's generated column). Files are deleted by the caller after commit,
only where no other customer's document shares the content.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline import customers as customer_ops
from timeline import documents as document_ops
from timeline import merge as merge_ops
from timeline.errors import NotFound
from timeline.events import utcnow
from timeline.records import StoredEvent, iso
from timeline.schema import (
    consents,
    customers,
    documents,
    events,
    idempotency_keys,
    identities,
    merges,
    outbox,
)


async def export(conn: AsyncConnection, customer_id: str) -> dict[str, Any]:
    """Everything held about a customer, as JSON-ready data."""
    customer = await customer_ops.get(conn, customer_id)
    if customer.erased_at is not None:
        raise NotFound("customer", customer_id)
    rows = await conn.execute(
        sa.select(events)
        .where(events.c.customer_id == customer_id)
        .order_by(events.c.occurred_at, events.c.id)
    )
    timeline = [StoredEvent.from_row(r).to_json() for r in rows.mappings()]
    docs = [d.to_json() for d in await document_ops.for_customer(conn, customer_id)]
    queued = await conn.execute(
        sa.select(
            outbox.c.id, outbox.c.event_id, outbox.c.channel, outbox.c.state, outbox.c.created_at
        )
        .join(events, events.c.id == outbox.c.event_id)
        .where(events.c.customer_id == customer_id)
    )
    return {
        "exported_at": iso(utcnow()),
        "customer": customer.to_json(),
        "events": timeline,
        "documents": docs,
        "outbox": [
            {
                "id": r.id,
                "event_id": r.event_id,
                "channel": r.channel,
                "state": r.state,
                "created_at": iso(r.created_at),
            }
            for r in queued
        ],
        "merges": await merge_ops.history(conn, customer_id),
    }


async def purged_documents(conn: AsyncConnection, customer_id: str) -> set[str]:
    """Ids of the customer's documents whose file retention deleted (``purged_at``)."""
    rows = await conn.execute(
        sa.select(documents.c.id).where(
            documents.c.customer_id == customer_id, documents.c.purged_at.is_not(None)
        )
    )
    return set(rows.scalars())


async def erase(conn: AsyncConnection, customer_id: str) -> list[str]:
    """Erase a customer, leaving a tombstone; returns file hashes no one else uses."""
    row = (
        await conn.execute(sa.select(customers.c.erased_at).where(customers.c.id == customer_id))
    ).one_or_none()
    if row is None or row.erased_at is not None:
        raise NotFound("customer", customer_id)
    event_ids = sa.select(events.c.id).where(events.c.customer_id == customer_id)
    hashes = set(
        (
            await conn.execute(
                sa.select(documents.c.sha256).where(
                    documents.c.customer_id == customer_id, documents.c.sha256.is_not(None)
                )
            )
        ).scalars()
    )
    await conn.execute(outbox.delete().where(outbox.c.event_id.in_(event_ids)))
    await conn.execute(documents.delete().where(documents.c.customer_id == customer_id))
    await conn.execute(events.delete().where(events.c.customer_id == customer_id))
    await conn.execute(identities.delete().where(identities.c.customer_id == customer_id))
    await conn.execute(consents.delete().where(consents.c.customer_id == customer_id))
    # Merge records hold ids of what moved; the erased side keeps no trace in them.
    await conn.execute(
        merges.delete().where(
            sa.or_(merges.c.source_id == customer_id, merges.c.target_id == customer_id)
        )
    )
    # Stored Idempotency-Key answers are copies of what we hold about the customer.
    await conn.execute(
        idempotency_keys.delete().where(
            sa.cast(idempotency_keys.c.response, sa.Text).contains(customer_id)
        )
    )
    # Customers merged into this one were part of it: erase them too.
    merged = list(
        (
            await conn.execute(
                sa.select(customers.c.id).where(customers.c.merged_into == customer_id)
            )
        ).scalars()
    )
    now = utcnow()
    await conn.execute(
        customers.update()
        .where(customers.c.id.in_([customer_id, *merged]))
        .values(
            name=None, timezone=None, attributes={}, merged_into=None, erased_at=now, updated_at=now
        )
    )
    if not hashes:
        return []
    still_used = set(
        (
            await conn.execute(
                sa.select(documents.c.sha256).where(documents.c.sha256.in_(list(hashes)))
            )
        ).scalars()
    )
    return sorted(hashes - still_used)
