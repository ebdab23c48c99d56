"""Reading the timeline: keyset pages, filters, full-text ``q``, cursors, single events."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import random
from datetime import timedelta

import pytest

from timeline import customers as customer_ops
from timeline import store
from timeline.db import Database
from timeline.errors import NotFound
from timeline.events import Attachment, Channel, Direction, Event, Kind
from timeline.files import FileStore
from timeline.ingest import ingest, ingest_batch
from timeline.records import StoredEvent
from timeline.store import BadCursor, decode_cursor, encode_cursor

from .conftest import REGION, T0, call, email_in, minutes, note, phone, sms_in


async def _customer(db: Database) -> str:
    async with db.write() as conn:
        return await customer_ops.create(conn, name="Pat")


async def _notes(
    db: Database, customer_id: str, offsets: list[float], text: str = "n"
) -> list[str]:
    batch = [note(customer_id, f"{text} {i}", at=T0 + minutes(m)) for i, m in enumerate(offsets)]
    result = await ingest(db, batch, region=REGION)
    return [o.event.id for o in result.outcomes if o.event]


async def _all_pages(
    db: Database, customer_id: str, limit: int, **filters: object
) -> list[list[StoredEvent]]:
    pages: list[list[StoredEvent]] = []
    cursor = None
    while True:
        async with db.read() as conn:
            items, cursor = await store.page(
                conn,
                customer_id,
                limit=limit,
                cursor=cursor,
                **filters,  # type: ignore[arg-type]
            )
        pages.append(items)
        if cursor is None:
            return pages


def _ordered(items: list[StoredEvent]) -> bool:
    keys = [(e.occurred_at, e.id) for e in items]
    return keys == sorted(keys, reverse=True)


async def test_pages_cover_the_timeline_without_gaps_or_repeats(db: Database) -> None:
    customer_id = await _customer(db)
    offsets = [float(i) for i in range(57)]
    random.Random(4).shuffle(offsets)
    ids = await _notes(db, customer_id, offsets)
    other = await _customer(db)
    await _notes(db, other, [1.0, 2.0])
    pages = await _all_pages(db, customer_id, limit=10)
    assert [len(p) for p in pages] == [10, 10, 10, 10, 10, 7]
    seen = [e for p in pages for e in p]
    assert sorted(e.id for e in seen) == sorted(ids)
    assert _ordered(seen)
    assert {e.customer_id for e in seen} == {customer_id}
    # An exact multiple of the page size ends without an empty page.
    pages = await _all_pages(db, other, limit=2)
    assert [len(p) for p in pages] == [2]
    # An empty timeline, or an unknown customer, is one empty page.
    empty = await _customer(db)
    async with db.read() as conn:
        assert await store.page(conn, empty) == ([], None)
        assert await store.page(conn, "no-such-customer") == ([], None)


async def test_equal_timestamps_are_ordered_by_id_without_gaps(db: Database) -> None:
    customer_id = await _customer(db)
    ids = await _notes(db, customer_id, [0.0] * 23 + [1.0] * 4 + [-1.0] * 3)
    pages = await _all_pages(db, customer_id, limit=5)
    seen = [e for p in pages for e in p]
    assert len(seen) == 30
    assert sorted(e.id for e in seen) == sorted(ids)
    assert _ordered(seen)
    same = [e.id for e in seen if e.occurred_at == T0]
    assert same == sorted(same, reverse=True)
    assert len(same) == 23


async def test_events_arriving_between_pages_neither_shift_nor_repeat(db: Database) -> None:
    customer_id = await _customer(db)
    original = set(await _notes(db, customer_id, [float(i) for i in range(40)]))
    seen: list[str] = []
    cursor = None
    newer = 100.0
    while True:
        async with db.read() as conn:
            items, cursor = await store.page(conn, customer_id, limit=7, cursor=cursor)
        seen.extend(e.id for e in items)
        # New messages arrive while the agent scrolls (newer than everything shown).
        added = await _notes(db, customer_id, [newer, newer + 0.5], text="late")
        newer += 1
        assert not set(added) & set(seen)
        if cursor is None:
            break
    original_seen = [i for i in seen if i in original]
    assert len(original_seen) == len(set(original_seen)) == 40
    assert set(original_seen) == original
    assert set(seen) == original  # nothing newer than the first page showed up later

    # An arrival at the very timestamp of the cursor is not seen twice either.
    customer_id = await _customer(db)
    await _notes(db, customer_id, [0.0] * 6)
    async with db.read() as conn:
        first, cursor = await store.page(conn, customer_id, limit=3)
    assert cursor is not None
    # An event at the cursor's very timestamp arrives; ids grow with time, so it sorts
    # before the cursor and belongs to the pages already shown. Ids order by the
    # millisecond only (random within it), so the late one is made a millisecond later.
    await asyncio.sleep(0.002)
    late = await _notes(db, customer_id, [0.0], text="late")
    async with db.read() as conn:
        second, after = await store.page(conn, customer_id, limit=10, cursor=cursor)
    assert after is None
    assert len(first) + len(second) == 6
    assert not {e.id for e in first} & {e.id for e in second}
    assert late[0] not in {e.id for e in second}


async def test_channel_filter(db: Database) -> None:
    [sms] = (await ingest(db, [sms_in(phone(1), at=T0)], region=REGION)).outcomes
    assert sms.event
    customer_id = sms.event.customer_id
    batch = [
        sms_in(phone(1), at=T0 + minutes(i))
        if i % 3
        else note(customer_id, "x", at=T0 + minutes(i))
        for i in range(1, 31)
    ]
    await ingest(db, batch, region=REGION)
    only_notes = [e for p in await _all_pages(db, customer_id, 4, channels=["note"]) for e in p]
    assert len(only_notes) == 10
    assert {e.channel for e in only_notes} == {"note"}
    assert _ordered(only_notes)
    both = [e for p in await _all_pages(db, customer_id, 4, channels=["note", "sms"]) for e in p]
    assert len(both) == 31
    none = [e for p in await _all_pages(db, customer_id, 4, channels=["email"]) for e in p]
    assert none == []
    # Channel and words combine.
    await ingest(
        db,
        [
            sms_in(phone(1), text="refund please", at=T0 + minutes(40)),
            note(customer_id, "refund approved", at=T0 + minutes(41)),
        ],
        region=REGION,
    )
    found = [
        e for p in await _all_pages(db, customer_id, 10, q="refund", channels=["sms"]) for e in p
    ]
    assert [e.text for e in found] == ["refund please"]


async def test_full_text_filter(db: Database) -> None:
    customer_id = await _customer(db)
    texts = {
        "a": "Your invoice is overdue",
        "b": "INVOICE paid, thanks",
        "c": "Meeting tomorrow about the invoice?",
        "d": "Nothing to see here",
        "e": "invoices plural is another word",
    }
    batch = [
        Event(
            channel=Channel.NOTE,
            kind=Kind.NOTE,
            direction=Direction.INTERNAL,
            occurred_at=T0 + minutes(i),
            subject="Billing" if key == "d" else None,
            text=text,
            customer_id=customer_id,
        )
        for i, (key, text) in enumerate(texts.items())
    ]
    await ingest(db, batch, region=REGION)
    other = await _customer(db)
    await ingest(db, [note(other, "invoice for someone else")], region=REGION)

    async def search(q: str, limit: int = 50) -> list[str | None]:
        found = [e for p in await _all_pages(db, customer_id, limit, q=q) for e in p]
        assert {e.customer_id for e in found} <= {customer_id}
        return sorted((e.text for e in found), key=lambda t: t or "")

    assert await search("invoice") == sorted([texts["a"], texts["b"], texts["c"]])
    assert await search("invoice", limit=1) == sorted([texts["a"], texts["b"], texts["c"]])
    assert await search("Invoice OVERDUE") == [texts["a"]]
    assert await search("overdue invoice") == [texts["a"]]
    assert await search("billing") == [texts["d"]]  # the subject is searched too
    assert await search("nomatch") == []
    assert await search("invoice", limit=2) == sorted([texts["a"], texts["b"], texts["c"]])
    # Query syntax in user input is neither interpreted nor an error.
    for q in [
        '"invoice',
        "invoice*",
        "invoice OR nothing",
        "NEAR(invoice",
        "text:invoice",
        "-x",
        "'",
    ]:
        await search(q)
    assert await search("!!!") == []
    assert await search("invoice OR nothing") == []  # every word must match


async def test_limit_is_clamped(db: Database) -> None:
    customer_id = await _customer(db)
    await _notes(db, customer_id, [float(i) for i in range(store.MAX_PAGE + 5)])
    async with db.read() as conn:
        one, cursor = await store.page(conn, customer_id, limit=0)
        assert len(one) == 1 and cursor is not None
        most, cursor = await store.page(conn, customer_id, limit=10_000)
        assert len(most) == store.MAX_PAGE and cursor is not None


def test_cursor_round_trip() -> None:
    when = T0 + timedelta(microseconds=123456)
    assert decode_cursor(encode_cursor(when, "abc123")) == (when, "abc123")
    assert "=" not in encode_cursor(when, "x")


BAD_CURSORS = [
    "garbage",
    "!!!",
    "é",
    base64.urlsafe_b64encode(b"2024-03-01T12:00:00|abc").decode(),  # naive timestamp
    base64.urlsafe_b64encode(b"2024-03-01T12:00:00+00:00|").decode(),  # no id
    base64.urlsafe_b64encode(b"not a date|abc").decode(),
    base64.urlsafe_b64encode(b"\xff\xfe|abc").decode(),
    base64.urlsafe_b64encode(b"no separator").decode(),
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_bad_cursor(cursor: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor(cursor)


async def test_page_with_a_bad_cursor_raises(db: Database) -> None:
    customer_id = await _customer(db)
    await _notes(db, customer_id, [1.0])
    async with db.read() as conn:
        for cursor in BAD_CURSORS:
            with pytest.raises(BadCursor):
                await store.page(conn, customer_id, cursor=cursor)


async def test_get_and_find_event(db: Database) -> None:
    [outcome] = (
        await ingest(db, [email_in("a@example.com", external_id="<m1@x>")], region=REGION)
    ).outcomes
    assert outcome.event
    async with db.read() as conn:
        assert await store.get_event(conn, outcome.event.id) == outcome.event
        assert await store.find_event(conn, "email", "<m1@x>") == outcome.event
        assert await store.find_event(conn, "email", "<M1@x>") is None  # case-sensitive ids
        assert await store.find_event(conn, "sms", "<m1@x>") is None
        with pytest.raises(NotFound) as info:
            await store.get_event(conn, "nope")
    assert info.value.what == "event"


async def test_first_page_reads_what_the_other_paths_read(db: Database, files: FileStore) -> None:
    """The first page goes through the driver; it must equal SQLAlchemy's reading."""
    batch = [
        email_in(
            "jane@example.com",
            at=T0 + timedelta(microseconds=123456),
            subject="Invoice",
            text="attached",
            attachments=[Attachment("invoice.pdf", "application/pdf", content=b"%PDF-1.4")],
        ),
        sms_in(phone(1), at=T0 + minutes(1), text='Grüße ✓ "quoted"\n'),
        call(phone(1), external_id="CA1", status="completed", at=T0 + minutes(2)),
    ]
    outcomes = (await ingest(db, batch, region=REGION, files=files)).outcomes
    ids = [o.event.id for o in outcomes if o.event]
    async with db.read() as conn:
        customer_ids = {(await store.get_event(conn, i)).customer_id for i in ids}
        singles = {i: await store.get_event(conn, i) for i in ids}
        firsts: list[StoredEvent] = []
        filtered: list[StoredEvent] = []
        for customer_id in customer_ids:
            firsts += (await store.page(conn, customer_id, limit=10))[0]
            filtered += (await store.page(conn, customer_id, limit=10, channels=list(Channel)))[0]
    assert sorted(firsts, key=lambda e: e.id) == sorted(filtered, key=lambda e: e.id)
    assert {e.id: e for e in firsts} == singles
    first_email = singles[ids[0]]
    assert first_email.occurred_at == T0 + timedelta(microseconds=123456)
    assert first_email.occurred_at.utcoffset() == timedelta(0)
    assert [a["filename"] for a in first_email.attachments] == ["invoice.pdf"]
    assert singles[ids[1]].text == 'Grüße ✓ "quoted"\n'


async def test_first_page_sees_its_own_transaction(db: Database) -> None:
    customer_id = await _customer(db)
    async with db.write() as conn:
        # Read first (on PostgreSQL before SQLAlchemy began the transaction), then write.
        assert await store.page(conn, customer_id) == ([], None)
        await ingest_batch(conn, [note(customer_id, "inside")], region=REGION)
        items, _ = await store.page(conn, customer_id)
        assert [e.text for e in items] == ["inside"]


async def test_first_page_json_is_the_event_json(db: Database, files: FileStore) -> None:
    """SQLite writes the first page's JSON itself; it must equal ``to_json`` exactly."""
    customer_id = await _customer(db)
    batch = [
        email_in(
            "jane@example.com",
            at=T0 + timedelta(microseconds=5),
            subject="Ünïcödé ✓ <b>",
            text='tab\tnewline\n quote" backslash\\ nul\x01',
            attachments=[
                Attachment("a.pdf", "application/pdf", content=b"%PDF-1.4"),
                Attachment("b.png", "image/png", content=b"\x89PNG", content_id="logo@x"),
            ],
        ),
        sms_in(phone(1), at=T0 + minutes(1), text=None, status=None),
        call(phone(1), external_id="CA9", status="completed", at=T0 + minutes(2)),
        dataclasses.replace(  # data is spliced into the JSON as stored
            sms_in(phone(2), at=T0 + minutes(3)),
            data={"nested": {"list": [1, 2.5, None, True], "ü": 'q"}'}, "empty": {}},
        ),
    ]
    outcomes = (await ingest(db, batch, region=REGION, files=files)).outcomes
    ids = {o.event.customer_id for o in outcomes if o.event}
    await _notes(db, customer_id, [float(i) for i in range(7)])
    ids.add(customer_id)
    async with db.read() as conn:
        for cid in ids:
            for limit in (3, 50):
                found = await store.first_page_json(conn, cid, limit=limit)
                items, nxt = await store.page(conn, cid, limit=limit)
                if db.dialect != "sqlite":
                    assert found is None
                    continue
                assert found is not None
                texts, found_next = found
                assert [json.loads(t) for t in texts] == [e.to_json() for e in items]
                assert found_next == nxt
        if db.dialect == "sqlite":
            assert await store.first_page_json(conn, "no-such-customer") == ([], None)
