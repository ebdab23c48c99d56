"""Export (GDPR Art. 15) and erasure (Art. 17) of a customer (RELIABILITY 40, 41)."""

from __future__ import annotations

import hashlib
import json

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline import consent, outbox, privacy, store
from timeline import customers as customer_ops
from timeline import documents as document_ops
from timeline import merge as merge_ops
from timeline.db import Database
from timeline.errors import NotFound
from timeline.events import Attachment, Channel, Event, Identity, IdentityKind
from timeline.files import FileStore
from timeline.ingest import ingest, ingest_batch
from timeline.schema import consents, customers, documents, events, identities, merges
from timeline.schema import outbox as outbox_table
from timeline.search import event_matches

from .conftest import (
    REGION,
    T0,
    count,
    email_in,
    minutes,
    note,
    phone,
    rows,
    sms_in,
    sms_out,
    snapshot,
)

SHARED = b"the same brochure sent to everyone"
PRIVATE = b"Jane's signed contract"


async def _jane(db: Database, files: FileStore) -> str:
    """A customer on several channels with documents, consent and a queued message."""
    async with db.write() as conn:
        jane = await customer_ops.create(
            conn,
            name="Jane Quixotic",
            timezone="Europe/Paris",
            attributes={"vip": True},
            ids=[
                Identity(IdentityKind.PHONE, phone(1)),
                Identity(IdentityKind.EMAIL, "jane@example.com"),
                Identity(IdentityKind.HANDLE, "telegram:1001"),
            ],
        )
    result = await ingest(
        db,
        [
            sms_in(phone(1), at=T0, text="my xylophone arrived broken"),
            email_in(
                "jane@example.com",
                at=T0 + minutes(1),
                subject="Contract",
                text="attached zanzibar",
                attachments=[
                    Attachment("contract.pdf", "application/pdf", content=PRIVATE),
                    Attachment("brochure.pdf", "application/pdf", content=SHARED),
                ],
            ),
            note(jane, "called about the xylophone", at=T0 + minutes(2)),
        ],
        region=REGION,
        files=files,
    )
    assert result.count("created") == 3
    async with db.write() as conn:
        queued = await ingest_one(conn, sms_out(phone(1), text="replacement xylophone on its way"))
        await outbox.enqueue(conn, event_id=queued, channel="sms", payload={"body": "xylophone"})
        await ingest_one(
            conn,
            consent.change(
                Channel.SMS,
                consent.OPTED_OUT,
                occurred_at=T0 + minutes(3),
                external_id="SM-stop",
                purposes=[consent.MARKETING],
                cause="STOP",
                sender=Identity(IdentityKind.PHONE, phone(1)),
            ),
        )
        sha = files.put(b"passport scan")
        await document_ops.add_upload(
            conn,
            jane,
            filename="passport.png",
            content_type="image/png",
            sha256=sha,
            size=13,
            author="a",
        )
    return jane


async def ingest_one(conn: AsyncConnection, event: Event) -> str:
    result = await ingest_batch(conn, [event], region=REGION)
    assert result.outcomes[0].event
    return result.outcomes[0].event.id


async def _bob(db: Database, files: FileStore) -> str:
    result = await ingest(
        db,
        [
            email_in(
                "bob@example.com",
                subject="Brochure",
                text="bob's zanzibar trip",
                attachments=[Attachment("brochure.pdf", "application/pdf", content=SHARED)],
            )
        ],
        region=REGION,
        files=files,
    )
    assert result.outcomes[0].event
    return result.outcomes[0].event.customer_id


async def test_export_contains_everything(db: Database, files: FileStore) -> None:
    jane = await _jane(db, files)
    await _bob(db, files)
    async with db.read() as conn:
        data = await privacy.export(conn, jane)
    json.dumps(data)  # JSON-ready
    customer = data["customer"]
    assert customer["id"] == jane
    assert customer["name"] == "Jane Quixotic"
    assert customer["phones"] == [phone(1)]
    assert customer["emails"] == ["jane@example.com"]
    assert customer["handles"] == [{"network": "telegram", "id": "1001"}]
    assert [(c["channel"], c["purpose"], c["state"]) for c in customer["consent"]] == [
        ("sms", "marketing", "opted_out")
    ]
    assert {e["channel"] for e in data["events"]} == {"sms", "email", "note", "document"}
    assert len(data["events"]) == 6
    assert {e["customer_id"] for e in data["events"]} == {jane}
    texts = " ".join(str(e["text"]) for e in data["events"])
    assert "xylophone arrived" in texts and "zanzibar" in texts
    assert {d["filename"] for d in data["documents"]} == {
        "contract.pdf",
        "brochure.pdf",
        "passport.png",
    }
    assert {d["customer_id"] for d in data["documents"]} == {jane}
    assert [o["state"] for o in data["outbox"]] == ["pending"]
    assert data["merges"] == []


async def test_erase_leaves_only_a_tombstone(db: Database, files: FileStore) -> None:
    jane = await _jane(db, files)
    bob = await _bob(db, files)
    bob_before = await snapshot(db, [bob])
    jane_hashes = {r["sha256"] for r in await rows(db, documents, documents.c.customer_id == jane)}

    async with db.write() as conn:
        unused = await privacy.erase(conn, jane)

    # Files: the shared brochure is still Bob's; the others may go.
    assert sorted(unused) == sorted(jane_hashes - {hashlib.sha256(SHARED).hexdigest()})
    assert hashlib.sha256(PRIVATE).hexdigest() in unused
    for table in (identities, events, documents, consents):
        assert await count(db, table, table.c.customer_id == jane) == 0, table.name
    assert await count(db, outbox_table) == 0
    [tombstone] = await rows(db, customers, customers.c.id == jane)
    assert tombstone["name"] is None
    assert tombstone["timezone"] is None
    assert tombstone["attributes"] == {}
    assert tombstone["erased_at"] is not None
    # Bob is untouched.
    assert await snapshot(db, [bob]) == bob_before

    # The search index forgot her words; Bob's shared word is still found.
    async with db.read() as conn:
        for word in ("xylophone", "Quixotic", "jane@example", "555"):
            assert await customer_ops.search(conn, word, limit=10, offset=0) == [], word
        assert await customer_ops.search(conn, "zanzibar", limit=10, offset=0) == [bob]
        matching = (
            await conn.execute(sa.select(events.c.id).where(event_matches(db.dialect, "xylophone")))
        ).all()
        assert matching == []
        if db.is_sqlite:
            raw = (
                await conn.execute(
                    sa.text("SELECT rowid FROM events_fts WHERE events_fts MATCH '\"xylophone\"'")
                )
            ).all()
            assert raw == []
        page, _ = await store.page(conn, jane, q="xylophone")
        assert page == []

    # She is gone for export and for a second erase; her number is free again.
    async with db.read() as conn:
        with pytest.raises(NotFound):
            await privacy.export(conn, jane)
    async with db.write() as conn:
        with pytest.raises(NotFound):
            await privacy.erase(conn, jane)
        with pytest.raises(NotFound):
            await privacy.erase(conn, "nobody")
    [again] = (await ingest(db, [sms_in(phone(1))], region=REGION)).outcomes
    assert again.event and again.event.customer_id not in (jane, bob)

    # The caller deletes the returned files; every document still held keeps its file.
    for sha in unused:
        files.delete(sha)
    for doc in await rows(db, documents):
        assert doc["sha256"] is None or files.exists(doc["sha256"])
    assert files.exists(hashlib.sha256(SHARED).hexdigest())
    assert not files.exists(hashlib.sha256(PRIVATE).hexdigest())


async def test_erase_takes_merged_customers_and_merge_records(
    db: Database, files: FileStore
) -> None:
    jane = await _jane(db, files)
    async with db.write() as conn:
        alias = await customer_ops.create(
            conn, name="J. Quixotic", ids=[Identity(IdentityKind.EMAIL, "jq@example.org")]
        )
    await ingest(db, [email_in("jq@example.org", text="alias message")], region=REGION)
    async with db.write() as conn:
        await merge_ops.merge(conn, jane, alias)
    async with db.write() as conn:
        await privacy.erase(conn, jane)
    assert await count(db, merges) == 0
    for customer_id in (jane, alias):
        [row] = await rows(db, customers, customers.c.id == customer_id)
        assert row["erased_at"] is not None and row["name"] is None
        assert row["merged_into"] is None
    assert await count(db, identities) == 0
    assert await count(db, events) == 0
