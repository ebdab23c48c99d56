"""The ingest pipeline on a real database: identity, idempotent store, forward-only status."""

from __future__ import annotations

import hashlib
import zoneinfo
from datetime import UTC, datetime, timedelta

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
    result = await ingest(db, [sms_in("(415) 555-0100", text="hi there")], region=REGION)
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
    assert stored.occurred_at == T0


async def test_spellings_of_one_number_reach_one_customer(db: Database) -> None:
    batch = [
        sms_in(s, at=T0 + minutes(i))
        for i, s in enumerate(
            ["(415) 555-0100", "415.555.0100", "+1 415 555 0100", "tel:+14155550100"]
        )
    ]
    first = await ingest(db, batch[:1], region=REGION)
    rest = await ingest(db, batch[1:], region=REGION)
    ids = {o.event.customer_id for o in first.outcomes + rest.outcomes if o.event}
    assert len(ids) == 1
    assert await count(db, customers) == 1
    assert await count(db, identities) == 1
    assert await count(db, events) == 4


async def test_outbound_event_belongs_to_the_recipient(db: Database) -> None:
    [inbound] = (await ingest(db, [sms_in(phone(1))], region=REGION)).outcomes
    [outbound] = (await ingest(db, [sms_out("415-555-0101")], region=REGION)).outcomes
    assert inbound.event and outbound.event
    assert outbound.event.customer_id == inbound.event.customer_id
    assert outbound.event.recipient == phone(1)
    assert outbound.event.sender == "+14155559999"
    assert await count(db, customers) == 1


async def test_email_sender_keeps_local_part_and_folds_domain(db: Database) -> None:
    result = await ingest(db, [email_in("Jane.Doe@Example.COM")], region=REGION)
    again = await ingest(db, [email_in("Jane.Doe@example.com")], region=REGION)
    other = await ingest(db, [email_in("jane.doe@example.com")], region=REGION)
    a, b, c = (r.outcomes[0].event for r in (result, again, other))
    assert a and b and c
    assert a.sender == "Jane.Doe@example.com"
    assert a.customer_id == b.customer_id
    assert c.customer_id != a.customer_id


async def test_event_with_customer_id_needs_no_identity(db: Database) -> None:
    async with db.write() as conn:
        customer_id = await customer_ops.create(conn, name="Ada")
    result = await ingest(db, [note(customer_id, "called back")], region=REGION)
    [outcome] = result.outcomes
    assert outcome.kind == "created"
    assert outcome.event and outcome.event.customer_id == customer_id
    assert await count(db, customers) == 1


async def test_ingesting_twice_stores_one_row(db: Database) -> None:
    event = sms_in(phone(1), external_id="SM-twice")
    first = await ingest(db, [event], region=REGION)
    second = await ingest(db, [event], region=REGION)
    assert first.outcomes[0].kind == "created"
    assert second.outcomes[0].kind == "duplicate"
    assert second.changed == []
    assert await count(db, events) == 1
    assert await count(db, customers) == 1


async def test_same_id_twice_in_one_batch_stores_one_row(db: Database) -> None:
    event = sms_in(phone(1), external_id="SM-batch")
    result = await ingest(db, [event, event, event], region=REGION)
    assert [o.kind for o in result.outcomes] == ["created", "duplicate", "duplicate"]
    assert await count(db, events) == 1


async def test_same_external_id_on_another_channel_is_another_event(db: Database) -> None:
    sms = sms_in(phone(1), external_id="X-1")
    mail = email_in("a@example.com", external_id="X-1")
    result = await ingest(db, [sms, mail], region=REGION)
    assert [o.kind for o in result.outcomes] == ["created", "created"]
    assert await count(db, events) == 2


async def test_events_without_external_id_are_never_deduplicated(db: Database) -> None:
    async with db.write() as conn:
        customer_id = await customer_ops.create(conn)
    batch = [note(customer_id, "same"), note(customer_id, "same")]
    await ingest(db, batch, region=REGION)
    await ingest(db, batch, region=REGION)
    assert await count(db, events) == 4


@pytest.mark.parametrize(
    ("callbacks", "final"),
    [
        (["delivered", "sent", "queued"], "delivered"),
        (["queued", "sent", "delivered"], "delivered"),
        (["undelivered", "sent"], "undelivered"),
        (["sent", "undelivered", "delivered"], "undelivered"),
        (["sent", "failed", "queued"], "failed"),
    ],
)
async def test_sms_status_only_moves_forward(db: Database, callbacks: list[str], final: str) -> None:
    first = sms_out(phone(1), external_id="SM-status", status="accepted")
    await ingest(db, [first], region=REGION)
    for status in callbacks:
        await ingest(
            db,
            [sms_out(phone(1), external_id="SM-status", status=status, update_only=True)],
            region=REGION,
        )
    async with db.read() as conn:
        stored = await store.find_event(conn, "sms", "SM-status")
    assert stored is not None and stored.status == final
    assert await count(db, events) == 1


async def test_status_callbacks_in_one_batch(db: Database) -> None:
    batch = [
        sms_out(phone(1), external_id="SM-b", status=s, update_only=i > 0)
        for i, s in enumerate(["queued", "delivered", "sent", "queued"])
    ]
    result = await ingest(db, batch, region=REGION)
    assert [o.kind for o in result.outcomes] == ["created", "updated", "duplicate", "duplicate"]
    async with db.read() as conn:
        stored = await store.find_event(conn, "sms", "SM-b")
    assert stored is not None and stored.status == "delivered"


async def test_status_update_outcomes_and_data_merge(db: Database) -> None:
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


async def test_call_statuses(db: Database) -> None:
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
    assert await count(db, customers) == 1


async def test_update_only_for_an_unknown_id_stores_nothing(db: Database) -> None:
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


async def test_rejected_event_does_not_stop_the_batch(db: Database) -> None:
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


async def test_rejected_event_is_not_remembered_as_seen(db: Database) -> None:
    bad = sms_in("12345", external_id="SM-fix")
    good = sms_in(phone(1), external_id="SM-fix")
    result = await ingest(db, [bad, good], region=REGION)
    assert [o.kind for o in result.outcomes] == ["rejected", "created"]
    assert await count(db, events) == 1


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
        docs = {
            r["id"]: dict(r)
            for r in (await conn.execute(sa.select(documents))).mappings()
        }
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


async def test_duplicate_with_attachments_adds_no_documents(db: Database, files: FileStore) -> None:
    event = email_in(
        "jane@example.com",
        attachments=[Attachment("a.txt", "text/plain", content=b"abc")],
    )
    await ingest(db, [event], region=REGION, files=files)
    await ingest(db, [event, event], region=REGION, files=files)
    assert await count(db, documents) == 1
    assert await count(db, events) == 1


async def test_same_content_twice_is_one_file(db: Database, files: FileStore) -> None:
    content = b"same bytes"
    batch = [
        email_in(f"p{i}@example.com", attachments=[Attachment("x.bin", "x/y", content=content)])
        for i in range(2)
    ]
    await ingest(db, batch, region=REGION, files=files)
    assert await count(db, documents) == 2
    stored = [p for p in files.root.rglob("*") if p.is_file()]
    assert len(stored) == 1


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
            db, [sms_out(phone(1), external_id="SM-p", status="sent")], region=REGION, publisher=publisher
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


async def test_occurred_at_is_stored_in_utc(db: Database) -> None:
    local = datetime(2024, 3, 1, 8, 30, tzinfo=UTC)
    offset = local.astimezone(zoneinfo.ZoneInfo("America/Los_Angeles"))
    assert offset.utcoffset() == timedelta(hours=-8)
    [outcome] = (await ingest(db, [sms_in(phone(1), at=offset)], region=REGION)).outcomes
    assert outcome.event
    async with db.read() as conn:
        stored = await store.get_event(conn, outcome.event.id)
    assert stored.occurred_at == local
    assert stored.occurred_at.utcoffset() == timedelta(0)


async def test_large_batch_uses_chunks(db: Database) -> None:
    # More than the 500-item chunks of the lookups, with repeats and status updates.
    batch = [sms_in(phone(i % 50), external_id=f"SM-big-{i}") for i in range(1200)]
    result = await ingest(db, batch, region=REGION)
    assert result.count("created") == 1200
    again = await ingest(db, batch[:700], region=REGION)
    assert again.count("duplicate") == 700
    assert await count(db, events) == 1200
    assert await count(db, customers) == 50


async def test_identity_belongs_to_the_existing_customer(db: Database) -> None:
    async with db.write() as conn:
        customer_id = await customer_ops.create(
            conn, name="Known", ids=[Identity(IdentityKind.PHONE, phone(7))]
        )
    [outcome] = (await ingest(db, [sms_in("(415) 555-0107")], region=REGION)).outcomes
    assert outcome.event and outcome.event.customer_id == customer_id
    assert await count(db, customers) == 1
