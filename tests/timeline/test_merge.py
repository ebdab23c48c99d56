"""Merging two customers and undoing it restores both exactly (timeline.merge)."""

from __future__ import annotations

from datetime import datetime

import pytest

from timeline import consent, store
from timeline import customers as customer_ops
from timeline import documents as document_ops
from timeline import merge as merge_ops
from timeline.consent import MARKETING, OPTED_IN, OPTED_OUT, TRANSACTIONAL
from timeline.db import Database
from timeline.errors import Conflict, NotFound
from timeline.events import Attachment, Channel, Identity, IdentityKind
from timeline.files import FileStore
from timeline.ingest import ingest
from timeline.schema import documents, events, identities, merges

from .conftest import (
    REGION,
    T0,
    count,
    email_in,
    minutes,
    note,
    phone,
    rows,
    sid,
    sms_in,
    snapshot,
)

SMS, EMAIL, VOICE = Channel.SMS, Channel.EMAIL, Channel.VOICE


async def _consent(
    db: Database,
    customer_id: str,
    channel: Channel,
    purpose: str,
    state: str,
    at: datetime,
) -> None:
    """A consent change the way the hub records one: a consent event, ingested."""
    event = consent.change(
        channel,
        state,
        occurred_at=at,
        external_id=sid("consent-"),
        purposes=[purpose],
        cause="test",
        customer_id=customer_id,
    )
    [outcome] = (await ingest(db, [event], region=REGION)).outcomes
    assert outcome.kind == "created"


async def _two_customers(db: Database, files: FileStore) -> tuple[str, str]:
    """A target and another customer, each with identities, events, documents, consent."""
    async with db.write() as conn:
        target = await customer_ops.create(
            conn,
            name="Jane Doe",
            attributes={"tier": "gold", "shared": "target"},
            ids=[Identity(IdentityKind.PHONE, phone(1))],
        )
        other = await customer_ops.create(
            conn,
            name="J. Doe",
            timezone="America/New_York",
            attributes={"shared": "other", "source": "import"},
            ids=[
                Identity(IdentityKind.EMAIL, "jane@example.com"),
                Identity(IdentityKind.HANDLE, "telegram:777"),
            ],
        )
    t_events = await ingest(
        db,
        [sms_in(phone(1), at=T0 + minutes(i), text=f"target {i}") for i in range(3)]
        + [note(target, "target note", at=T0 + minutes(10))],
        region=REGION,
        files=files,
    )
    o_events = await ingest(
        db,
        [
            email_in(
                "jane@example.com",
                at=T0 + minutes(5),
                attachments=[Attachment("cv.pdf", "application/pdf", content=b"%PDF other")],
            ),
            email_in("jane@example.com", at=T0 + minutes(6), text="other text"),
        ],
        region=REGION,
        files=files,
    )
    async with db.write() as conn:
        sha = files.put(b"uploaded by an agent")
        await document_ops.add_upload(
            conn,
            other,
            filename="id.png",
            content_type="image/png",
            sha256=sha,
            size=20,
            author="a1",
        )
        await document_ops.add_upload(
            conn,
            target,
            filename="t.txt",
            content_type="text/plain",
            sha256=sha,
            size=20,
            author=None,
        )
    assert t_events.count("created") == 4 and o_events.count("created") == 2
    # Both have sms/marketing (the target's is the newer one), each has one of its own.
    await _consent(db, target, SMS, MARKETING, OPTED_IN, T0 + minutes(20))
    await _consent(db, target, EMAIL, TRANSACTIONAL, OPTED_OUT, T0 + minutes(21))
    await _consent(db, other, SMS, MARKETING, OPTED_OUT, T0 + minutes(15))
    await _consent(db, other, VOICE, MARKETING, OPTED_IN, T0 + minutes(16))
    return target, other


async def test_merge_then_unmerge_restores_both_exactly(db: Database, files: FileStore) -> None:
    target, other = await _two_customers(db, files)
    before = await snapshot(db, [target, other])
    other_rows = {
        name: [r for r in table_rows if r.get("customer_id", r.get("id")) == other]
        for name, table_rows in before.items()
        if name != "outbox"
    }
    assert all(other_rows[name] for name in ("identities", "events", "documents", "consents"))

    async with db.write() as conn:
        merge_id = await merge_ops.merge(conn, target, other, actor="agent-7")

    # The target got everything, the other is marked merged.
    for name in ("identities", "events", "documents"):
        table = {"identities": identities, "events": events, "documents": documents}[name]
        assert await count(db, table, table.c.customer_id == other) == 0
        moved = {r["id"] for r in other_rows[name]}
        now_target = {r["id"] for r in await rows(db, table, table.c.customer_id == target)}
        assert moved <= now_target, name
    async with db.read() as conn:
        merged_target = await customer_ops.get(conn, target)
        merged_other = await customer_ops.get(conn, other)
        page, _ = await store.page(conn, target, limit=200)
        history = await merge_ops.history(conn, target)
    assert merged_other.merged_into == target
    assert merged_target.merged_into is None
    assert merged_target.phones == [phone(1)]
    assert set(merged_target.emails) == {"jane@example.com"}
    assert merged_target.handles == [{"network": "telegram", "id": "777"}]
    assert merged_target.name == "Jane Doe"  # the target's own fields win
    assert merged_target.timezone == "America/New_York"  # filled from the other
    assert merged_target.attributes == {"tier": "gold", "shared": "target", "source": "import"}
    assert merged_target.counts["total"] == 7 + 5
    assert len(page) == 12
    states = {(c["channel"], c["purpose"]): c["state"] for c in merged_target.consent}
    assert states == {
        ("sms", "marketing"): OPTED_IN,
        ("email", "transactional"): OPTED_OUT,
        ("voice", "marketing"): OPTED_IN,
    }
    assert merged_other.consent == []
    assert [h["id"] for h in history] == [merge_id]
    assert history[0]["actor"] == "agent-7"
    assert history[0]["moved"] == {"identities": 2, "events": 5, "documents": 2}
    # New mail from the other's address now reaches the target.
    async with db.read() as conn:
        assert (
            await customer_ops.find(conn, Identity(IdentityKind.EMAIL, "jane@example.com"))
            == target
        )
        with pytest.raises(Conflict):
            await customer_ops.require_active(conn, other)

    async with db.write() as conn:
        assert await merge_ops.unmerge(conn, merge_id) == (target, other)

    after = await snapshot(db, [target, other])
    assert after == before
    async with db.read() as conn:
        history = await merge_ops.history(conn, other)
    assert history[0]["undone_at"] is not None
    assert await count(db, merges) == 1


async def test_merge_into_itself_and_other_refusals(db: Database, files: FileStore) -> None:
    target, other = await _two_customers(db, files)
    before = await snapshot(db, [target, other])
    async with db.write() as conn:
        with pytest.raises(Conflict):
            await merge_ops.merge(conn, target, target)
        with pytest.raises(NotFound):
            await merge_ops.merge(conn, target, "no-such-customer")
        with pytest.raises(NotFound):
            await merge_ops.unmerge(conn, "no-such-merge")
    assert await snapshot(db, [target, other]) == before

    async with db.write() as conn:
        merge_id = await merge_ops.merge(conn, target, other)
    async with db.write() as conn:
        with pytest.raises(Conflict):  # already merged away
            await merge_ops.merge(conn, target, other)
        with pytest.raises(Conflict):
            await merge_ops.merge(conn, other, target)
    async with db.write() as conn:
        await merge_ops.unmerge(conn, merge_id)
    async with db.write() as conn:
        with pytest.raises(Conflict):
            await merge_ops.unmerge(conn, merge_id)
    assert await snapshot(db, [target, other]) == before


async def test_events_arriving_after_the_merge_stay_with_the_target(
    db: Database, files: FileStore
) -> None:
    target, other = await _two_customers(db, files)
    before = await snapshot(db, [target, other])
    async with db.write() as conn:
        merge_id = await merge_ops.merge(conn, target, other)
    late = await ingest(
        db,
        [
            email_in("jane@example.com", at=T0 + minutes(30), text="after merge, other's address"),
            sms_in(phone(1), at=T0 + minutes(31), text="after merge, target's phone"),
            note(target, "agent note after merge", at=T0 + minutes(32)),
        ],
        region=REGION,
    )
    late_ids = {o.event.id for o in late.outcomes if o.event}
    assert {o.event.customer_id for o in late.outcomes if o.event} == {target}
    async with db.write() as conn:
        await merge_ops.unmerge(conn, merge_id)
    after = await snapshot(db, [target, other])
    after_events = {e["id"]: e for e in after["events"]}
    assert {i for i in after_events if after_events[i]["customer_id"] == target} >= late_ids
    # Apart from the late events, both customers are as they were.
    after["events"] = [e for e in after["events"] if e["id"] not in late_ids]
    assert after == before
    async with db.read() as conn:
        # The identity went back, so the other's next mail is the other's again.
        assert (
            await customer_ops.find(conn, Identity(IdentityKind.EMAIL, "jane@example.com")) == other
        )


async def test_chained_merges_undo_in_reverse_order(db: Database, files: FileStore) -> None:
    target, other = await _two_customers(db, files)
    async with db.write() as conn:
        third = await customer_ops.create(
            conn, name="Third", ids=[Identity(IdentityKind.PHONE, phone(3))]
        )
    await ingest(db, [sms_in(phone(3), text="third's message")], region=REGION)
    before = await snapshot(db, [target, other, third])
    async with db.write() as conn:
        inner = await merge_ops.merge(conn, target, other)
    async with db.write() as conn:
        outer = await merge_ops.merge(conn, third, target)
    async with db.read() as conn:
        assert (await customer_ops.get(conn, third)).counts["total"] == 13
    async with db.write() as conn:
        with pytest.raises(Conflict):  # the target was merged into the third since
            await merge_ops.unmerge(conn, inner)
    async with db.write() as conn:
        await merge_ops.unmerge(conn, outer)
    async with db.write() as conn:
        await merge_ops.unmerge(conn, inner)
    assert await snapshot(db, [target, other, third]) == before


async def test_merge_keeps_the_newer_opt_out(db: Database) -> None:
    async with db.write() as conn:
        target = await customer_ops.create(
            conn, name="T", ids=[Identity(IdentityKind.PHONE, phone(1))]
        )
        other = await customer_ops.create(
            conn, name="O", ids=[Identity(IdentityKind.PHONE, phone(2))]
        )
    await _consent(db, target, SMS, MARKETING, OPTED_IN, T0)
    await _consent(db, other, SMS, MARKETING, OPTED_OUT, T0 + minutes(60))
    async with db.write() as conn:
        await merge_ops.merge(conn, target, other)
    async with db.read() as conn:
        objection = await consent.objection(conn, target, "sms", MARKETING)
    assert objection is not None
