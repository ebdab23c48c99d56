"""Documents on a customer's profile: uploads (an event on the timeline) and attachments."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.customers import require_active
from timeline.errors import NotFound
from timeline.events import Channel, Direction, Kind, utcnow
from timeline.ids import new_id
from timeline.records import Document, StoredEvent
from timeline.schema import customers, documents, events
from timeline.search import index_event


async def add_upload(
    conn: AsyncConnection,
    customer_id: str,
    *,
    filename: str,
    content_type: str,
    sha256: str,
    size: int,
    author: str | None,
) -> tuple[Document, StoredEvent]:
    """Record an uploaded file (already in the FileStore) and its timeline event."""
    await require_active(conn, customer_id)
    now = utcnow()
    event_id = new_id()
    doc_id = new_id()
    summary = {"id": doc_id, "filename": filename, "content_type": content_type, "size": size}
    event_row = {
        "id": event_id,
        "customer_id": customer_id,
        "channel": Channel.DOCUMENT.value,
        "kind": Kind.DOCUMENT.value,
        "direction": Direction.INTERNAL.value,
        "external_id": None,
        "occurred_at": now,
        "status": None,
        "subject": filename,
        "text": None,
        "html": None,
        "thread_key": None,
        "sender": None,
        "recipient": None,
        "attachments": [summary],
        "data": {"author": author} if author else {},
        "created_at": now,
        "updated_at": now,
    }
    await conn.execute(events.insert().values(**event_row))
    await index_event(conn, event_id)
    doc_row = {
        "id": doc_id,
        "customer_id": customer_id,
        "event_id": event_id,
        "filename": filename,
        "content_type": content_type,
        "size": size,
        "sha256": sha256,
        "content_id": None,
        "source_url": None,
        "created_at": now,
    }
    await conn.execute(documents.insert().values(**doc_row))
    await conn.execute(
        customers.update().where(customers.c.id == customer_id).values(updated_at=now)
    )
    return Document.from_row(doc_row), StoredEvent.from_row(event_row)


async def get(conn: AsyncConnection, document_id: str) -> Document:
    """One document; NotFound if unknown."""
    row = (
        (await conn.execute(sa.select(documents).where(documents.c.id == document_id)))
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise NotFound("document", document_id)
    return Document.from_row(row)


async def for_customer(conn: AsyncConnection, customer_id: str) -> list[Document]:
    """A customer's documents, newest first."""
    rows = await conn.execute(
        sa.select(documents)
        .where(documents.c.customer_id == customer_id)
        .order_by(documents.c.created_at.desc(), documents.c.id.desc())
    )
    return [Document.from_row(r) for r in rows.mappings()]
