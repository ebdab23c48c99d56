"""The ingest pipeline on a real database: identity, idempotent store, forward-only status."""

from __future__ import annotations

import hashlib
import zoneinfo
from datetime import timedelta

import pytest
import sqlalchemy as sa

from timeline import customers as customer_ops
from timeline import store
from timeline.db import Database
from timeline.events import (
    Attachment,
    Channel,
    Direction,
    Event,
    Identity,
    IdentityKind,
    Kind,
)
from timeline.files import FileStore
from timeline.ingest import ingest, ingest_batch
from timeline.publish import Publisher
from timeline.schema import customers, documents, events, identities

from .conftest import REGION, T0, call, count, email_in, minutes, note, phone, sid, sms_in, sms_out


async def test_unknown_sender_creates_a_customer_with_the_normalized_identity(db: Database) -> None:
    offset = T0.astimezone(zoneinfo.ZoneInfo("America/Los_Angeles"))
    result = await ingest(db, [sms_in("(415) 555-0100", text="hi there", at=offset)], region=REGION)
    [outcome] = result.outcomes
    assert outcome.kind == "created"
    assert outcome.event is not None
    assert outcome.event.sender == "+14155550100"
    assert outcome.event.recipient == "+14155559999"
    async with db.read() as conn:
        customer = await customer_ops.get(conn, outcome.event.customer_id)
        stored = await store.get_event(conn, outcome.event.id)
    assert customer.phones == ["+14155550100"]
    assert customer.counts == {"sms": 1, "total": 1}
    assert stored == outcome.event
    assert stored.text == "hi there"
    # Stored and read back in UTC, whatever offset the provider used.
    assert stored.occurred_at == T0
    assert stored.occurred_at.utcoffset() == timedelta(0)

    # Every spelling of the number, inbound or outbound, reaches the same customer.
    spellings = ["415.555.0100", "+1 415 555 0100", "tel:+14155550100"]
    more = await ingest(
        db,
        [sms_in(s, at=T0 + minutes(i)) for i, s in enumerate(spellings)]
        + [sms_out("415-555-0100", at=T0 + minutes(5))],
        region=REGION,
    )
    assert {o.event.customer_id for o in more.outcomes if o.event} == {customer.id}
    outbound = more.outcomes[-1].event
    assert outbound is not None
    assert outbound.recipient == "+14155550100"  # the customer's side is normalized
    assert outbound.sender == "+14155559999"
    assert await count(db, customers) == 1
    assert await count(db, identities) == 1
    assert await count(db, events) == 5


async def test_identities_reach_their_customers(db: Database) -> None:
    # Emails: the domain is case-folded, the local part kept as given.
    mails = await ingest(
        db,
        [
            email_in("Jane.Doe@Example.COM"),
            email_in("Jane.Doe@example.com"),
            email_in("jane.doe@example.com"),
        ],
        region=REGION,
    )
    a, b, c = (o.event for o in mails.outcomes)
    assert a and b and c
    assert a.sender == "Jane.Doe@example.com"
    assert a.customer_id == b.customer_id
    assert c.customer_id != a.customer_id
    # A known identity belongs to its customer; customer_id needs no identity at all.
    async with db.write() as conn:
        known = await customer_ops.create(
            conn, name="Known", ids=[Identity(IdentityKind.PHONE, phone(7))]
        )
    result = await ingest(db, [sms_in("(415) 555-0107"), note(known, "called back")], region=REGION)
    assert [o.kind for o in result.outcomes] == ["created", "created"]
    assert {o.event.customer_id for o in result.outcomes if o.event} == {known}
    assert await count(db, customers) == 3


async def test_ingest_is_idempotent_on_channel_and_external_id(db: Database) -> None:
    # Twice, in two batches: one row.
    event = sms_in(phone(1), external_id="SM-twice")
    first = await ingest(db, [event], region=REGION)
    second = await ingest(db, [event], region=REGION)
    assert first.outcomes[0].kind == "created"
    assert second.outcomes[0].kind == "duplicate"
    assert second.changed == []
    # The same id three times inside one batch: one row.
    batch_event = sms_in(phone(1), external_id="SM-batch")
    result = await ingest(db, [batch_event, batch_event, batch_event], region=REGION)
    assert [o.kind for o in result.outcomes] == ["created", "duplicate", "duplicate"]
    assert await count(db, events) == 2
    # The same id on another channel is another event.
    result = await ingest(
        db,
        [sms_in(phone(1), external_id="X-1"), email_in("a@example.com", external_id="X-1")],
        region=REGION,
    )
    assert [o.kind for o in result.outcomes] == ["created", "created"]
    assert await count(db, events) == 4
    # Events without a provider id are never deduplicated.
    customer_id = first.outcomes[0].event.customer_id if first.outcomes[0].event else ""
    notes = [note(customer_id, "same"), note(customer_id, "same")]
    await ingest(db, notes, region=REGION)
    await ingest(db, notes, region=REGION)
    assert await count(db, events) == 8
    assert await count(db, customers) == 2


SMS_SEQUENCES = [
    (["delivered", "sent", "queued"], "delivered"),
    (["queued", "sent", "delivered"], "delivered"),
    (["undelivered", "sent"], "undelivered"),
    (["sent", "undelivered", "delivered"], "undelivered"),
    (["sent", "failed", "queued"], "failed"),
    (["delivered", "read", "delivered"], "read"),
]


async def test_sms_status_only_moves_forward(db: Database) -> None:
    for n, (callbacks, final) in enumerate(SMS_SEQUENCES):
        message_sid = f"SM-status-{n}"
        await ingest(
            db, [sms_out(phone(1), external_id=message_sid, status="accepted")], region=REGION
        )
        for status in callbacks:
            await ingest(
                db,
                [sms_out(phone(1), external_id=message_sid, status=status, update_only=True)],
                region=REGION,
            )
        async with db.read() as conn:
            stored = await store.find_event(conn, "sms", message_sid)
        assert stored is not None and stored.status == final, (callbacks, final)
    assert await count(db, events) == len(SMS_SEQUENCES)

    # Callbacks inside one batch (group commit) obey the same order.
    batch = [
        sms_out(phone(1), external_id="SM-b", status=s, update_only=i > 0)
        for i, s in enumerate(["queued", "delivered", "sent", "queued"])
    ]
    result = await ingest(db, batch, region=REGION)
    assert [o.kind for o in result.outcomes] == ["created", "updated", "duplicate", "duplicate"]
    async with db.read() as conn:
        stored = await store.find_event(conn, "sms", "SM-b")
    assert stored is not None and stored.status == "delivered"
    assert await count(db, events) == len(SMS_SEQUENCES) + 1


async def test_status_updates_merge_data_and_calls_move_forward(db: Database) -> None:
    await ingest(db, [sms_out(phone(1), external_id="SM-d", status="sent")], region=REGION)
    moved = await ingest(
        db,
        [
            sms_out(
                phone(1),
                external_id="SM-d",
                status="undelivered",
                update_only=True,
                data={"error_code": 30003},
            )
        ],
        region=REGION,
    )
    [outcome] = moved.outcomes
    assert outcome.kind == "updated"
    assert outcome.event and outcome.event.status == "undelivered"
    assert outcome.event.data["error_code"] == 30003
    stale = await ingest(
        db,
        [sms_out(phone(1), external_id="SM-d", status="delivered", update_only=True)],
        region=REGION,
    )
    assert stale.outcomes[0].kind == "duplicate"
    async with db.read() as conn:
        stored = await store.find_event(conn, "sms", "SM-d")
    assert stored is not None
    assert stored.status == "undelivered"
    assert stored.data == {"error_code": 30003}

    # Call statuses move forward the same way.
    caller = "(415) 555-0123"
    sequence = ["completed", "ringing", "in-progress", "busy"]
    await ingest(db, [call(caller, external_id="CA1", status="ringing")], region=REGION)
    for status in sequence:
        await ingest(
            db, [call(caller, external_id="CA1", status=status, update_only=True)], region=REGION
        )
    await ingest(db, [call(caller, external_id="CA2", status="ringing")], region=REGION)
    await ingest(
        db, [call(caller, external_id="CA2", status="in-progress", update_only=True)], region=REGION
    )
    async with db.read() as conn:
        first = await store.find_event(conn, "voice", "CA1")
        second = await store.find_event(conn, "voice", "CA2")
    assert first is not None and first.status == "completed"
    assert second is not None and second.status == "in-progress"
    assert await count(db, customers) == 2


async def test_unknown_updates_store_nothing_and_rejects_stop_nothing(db: Database) -> None:
    result = await ingest(
        db,
        [sms_out(phone(1), external_id="SM-never-seen", status="delivered", update_only=True)],
        region=REGION,
    )
    [outcome] = result.outcomes
    assert outcome.kind == "unknown"
    assert outcome.event is None
    assert result.changed == []
    assert await count(db, events) == 0
    assert await count(db, customers) == 0
    assert await count(db, identities) == 0

    # A rejected event (invalid phone, no identity) does not stop the rest of its batch.
    batch = [
        sms_in(phone(1), text="first"),
        sms_in("12345", text="bad number"),
        Event(
            channel=Channel.SMS,
            kind=Kind.MESSAGE,
            direction=Direction.INBOUND,
            occurred_at=T0,
            external_id=sid(),
            text="nobody",
        ),
        sms_in(phone(2), text="last"),
    ]
    result = await ingest(db, batch, region=REGION)
    kinds = [o.kind for o in result.outcomes]
    assert kinds == ["created", "rejected", "rejected", "created"]
    assert result.count("rejected") == 2
    bad = result.outcomes[1]
    assert bad.reason is not None and bad.reason.startswith("phone:")
    assert "12345" not in bad.reason
    assert result.outcomes[2].reason and "counterpart" in result.outcomes[2].reason
    assert await count(db, events) == 2
    assert await count(db, customers) == 2
    # A rejected event does not count as seen: a later valid one with its id is stored.
    again = await ingest(
        db,
        [sms_in("12345", external_id="SM-fix"), sms_in(phone(1), external_id="SM-fix")],
        region=REGION,
    )
    assert [o.kind for o in again.outcomes] == ["rejected", "created"]
    assert await count(db, events) == 3


async def test_attachments_become_documents_and_files(db: Database, files: FileStore) -> None:
    pdf = b"%PDF-1.4 invoice"
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    event = email_in(
        "jane@example.com",
        attachments=[
            Attachment("invoice.pdf", "application/pdf", content=pdf),
            Attachment("logo.png", "image/png", content=png, content_id="logo@x"),
            Attachment("remote.jpg", "image/jpeg", url="https://api.example/media/1"),
        ],
    )
    [outcome] = (await ingest(db, [event], region=REGION, files=files)).outcomes
    assert outcome.kind == "created" and outcome.event
    summaries = outcome.event.attachments
    assert [(a["filename"], a["content_type"], a["size"]) for a in summaries] == [
        ("invoice.pdf", "application/pdf", len(pdf)),
        ("logo.png", "image/png", len(png)),
        ("remote.jpg", "image/jpeg", 0),
    ]
    async with db.read() as conn:
        docs = {r["id"]: dict(r) for r in (await conn.execute(sa.select(documents))).mappings()}
        stored = await store.get_event(conn, outcome.event.id)
    assert stored.attachments == summaries
    assert set(docs) == {a["id"] for a in summaries}
    by_name = {d["filename"]: d for d in docs.values()}
    for name, content in (("invoice.pdf", pdf), ("logo.png", png)):
        doc = by_name[name]
        assert doc["customer_id"] == outcome.event.customer_id
        assert doc["event_id"] == outcome.event.id
        assert doc["size"] == len(content)
        assert doc["sha256"] == hashlib.sha256(content).hexdigest()
        assert files.path(doc["sha256"]).read_bytes() == content
    assert by_name["logo.png"]["content_id"] == "logo@x"
    remote = by_name["remote.jpg"]
    assert remote["sha256"] is None
    assert remote["source_url"] == "https://api.example/media/1"


async def test_attachments_are_stored_once(db: Database, files: FileStore) -> None:
    # A repeated event adds no documents.
    event = email_in(
        "jane@example.com",
        attachments=[Attachment("a.txt", "text/plain", content=b"abc")],
    )
    await ingest(db, [event], region=REGION, files=files)
    await ingest(db, [event, event], region=REGION, files=files)
    assert await count(db, documents) == 1
    assert await count(db, events) == 1
    # The same content on two events is two documents and one file.
    content = b"same bytes"
    batch = [
        email_in(f"p{i}@example.com", attachments=[Attachment("x.bin", "x/y", content=content)])
        for i in range(2)
    ]
    await ingest(db, batch, region=REGION, files=files)
    assert await count(db, documents) == 3
    stored = [p for p in files.root.rglob("*") if p.is_file()]
    assert len(stored) == 2


async def test_ingest_batch_rolls_back_with_the_callers_transaction(db: Database) -> None:
    class Stop(Exception):
        pass

    with pytest.raises(Stop):
        async with db.write() as conn:
            result = await ingest_batch(conn, [sms_in(phone(1))], region=REGION)
            assert result.outcomes[0].kind == "created"
            raise Stop
    assert await count(db, events) == 0
    assert await count(db, customers) == 0
    assert await count(db, identities) == 0


async def test_publishes_created_and_updated_after_commit(db: Database) -> None:
    publisher = Publisher()
    with publisher.subscribe() as sub:
        await ingest(
            db,
            [sms_out(phone(1), external_id="SM-p", status="sent")],
            region=REGION,
            publisher=publisher,
        )
        await ingest(
            db,
            [sms_out(phone(1), external_id="SM-p", status="delivered", update_only=True)],
            region=REGION,
            publisher=publisher,
        )
        # Neither a duplicate, nor a stale callback, nor an unknown id is published.
        await ingest(
            db,
            [
                sms_out(phone(1), external_id="SM-p", status="sent", update_only=True),
                sms_out(phone(1), external_id="SM-p", status="delivered"),
                sms_out(phone(1), external_id="SM-nope", status="sent", update_only=True),
            ],
            region=REGION,
            publisher=publisher,
        )
        got = []
        while not sub.queue.empty():
            item = sub.queue.get_nowait()
            assert item is not None
            got.append(item)
    assert [(topic, e.external_id, e.status) for topic, e in got] == [
        ("timeline", "SM-p", "sent"),
        ("timeline", "SM-p", "delivered"),
    ]


async def test_large_batch_uses_chunks(db: Database) -> None:
    # More events than the 500-item chunks of the lookups, then most of them again.
    batch = [sms_in(phone(i % 50), external_id=f"SM-big-{i}") for i in range(620)]
    result = await ingest(db, batch, region=REGION)
    assert result.count("created") == 620
    again = await ingest(
        db, [*batch[:560], sms_in(phone(1), external_id="SM-big-new")], region=REGION
    )
    assert again.count("duplicate") == 560
    assert again.count("created") == 1
    assert await count(db, events) == 621
    assert await count(db, customers) == 50
