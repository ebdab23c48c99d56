"""Screen pops of calls arriving together are read together, and read the same."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.voice_state import (
    Coalescer,
    Take,
    pops_and_audiences,
    prepared_pops,
    screen_pop,
    screen_pops,
)
from tests.hub.voice.conftest import OUR_NUMBER, VoiceHub
from timeline import calls, store
from timeline import customers as customer_ops
from timeline.events import Attachment, Channel, Direction, Event, Identity, IdentityKind, Kind
from timeline.files import FileStore
from timeline.ingest import ingest_batch
from timeline.publish import audiences


async def test_group_reads_equal_one_at_a_time(hub: VoiceHub) -> None:
    ann = await hub.customer_with("+14155550181", name="Ann")
    bob = await hub.customer_with("+14155550182", name="Bob")
    await hub.api.patch(
        f"/api/v1/customers/{bob['id']}",
        json={"add": {"emails": ["bob@example.org"]}},
    )
    teams = await hub.api.patch(
        f"/api/v1/customers/{bob['id']}",
        json={"teams": ["red", "blue"]},
        headers={"Authorization": f"Bearer {hub.tokens['supervisor']}"},
    )
    assert teams.status_code == 200, teams.text
    for i in range(51):  # more than a page
        await hub.api.post(f"/api/v1/customers/{ann['id']}/notes", json={"text": f"n{i}"})
    await hub.sandbox.text_hub("+14155550182", OUR_NUMBER, "STOP")
    results = [
        await hub.sandbox.call_hub(phone, OUR_NUMBER)
        for phone in ("+14155550181", "+14155550182", "+14155550183")
    ]
    await hub.sandbox.settle()
    async with hub.db.read() as conn:
        events = [await store.find_event(conn, "voice", r.sid) for r in results]
        assert all(e is not None for e in events)
        known = [e for e in events if e is not None]
        ids = [e.customer_id for e in known] + ["no-such-customer"]
        many = await calls.customers_many(conn, ids)
        pages = await calls.first_pages(conn, ids, limit=50)
        as_json = await calls.first_pages_json(conn, ids, limit=50)
        for customer_id in ids[:-1]:
            one = await customer_ops.get(conn, customer_id)
            # Consent comes in no particular order from either.
            assert sorted(many[customer_id].consent, key=str) == sorted(one.consent, key=str)
            assert dataclasses.replace(many[customer_id], consent=one.consent) == one
            page, _ = await store.page(conn, customer_id, limit=50)
            assert pages[customer_id] == page
            assert as_json[customer_id] == [e.to_json() for e in page]
        assert "no-such-customer" not in many and pages["no-such-customer"] == []
        assert as_json["no-such-customer"] == []
        assert len(pages[ann["id"]]) == 50
        assert many[bob["id"]].consent and many[bob["id"]].emails == ["bob@example.org"]
        together = await screen_pops(conn, known)
        alone = [await screen_pop(conn, e) for e in known]
        prepared = await prepared_pops(conn, known)
        written = [json.loads(p.text) for p in prepared]  # as the stream sends them
        for pop in together + alone + written:
            pop["customer"]["consent"].sort(key=str)
        assert together == alone == written
        assert [p.customer_id for p in prepared] == [e.customer_id for e in known]
        assert all(p.data == json.loads(p.text) for p in prepared)
        # Pops and audiences as incoming calls read them (on SQLite in one trip to the
        # driver's thread): the same pops, and the audiences audiences() reads.
        paired = await pops_and_audiences(conn, [*known, known[0]])
        assert [p.text for p, _ in paired] == [p.text for p in [*prepared, prepared[0]]]
        expected = await audiences(conn, [e.customer_id for e in known])
        assert [a for _, a in paired] == [expected[e.customer_id] for e in [*known, known[0]]]
        assert expected[bob["id"]].teams == {"red", "blue"}


async def test_waiting_work_is_done_together_and_failures_reach_everyone() -> None:
    runs: list[list[int]] = []

    async def double(take: Take[int]) -> list[int]:
        await asyncio.sleep(0.01)  # as a run waits for SQLite's write lock
        items = await take()
        runs.append(items)
        await asyncio.sleep(0.01)
        return [2 * i for i in items]

    coalesce: Coalescer[int, int] = Coalescer(double)
    first = asyncio.ensure_future(coalesce(0))
    await asyncio.sleep(0)  # its run has started, with only it waiting
    more = [asyncio.ensure_future(coalesce(i)) for i in (1, 2, 3)]
    assert await asyncio.gather(first, *more) == [0, 2, 4, 6]
    assert runs == [[0, 1, 2, 3]]  # those arriving before the run took its items joined it

    runs.clear()
    first = asyncio.ensure_future(coalesce(4))
    await asyncio.sleep(0.015)  # the run has taken its items
    assert await asyncio.gather(first, *(coalesce(i) for i in (5, 6))) == [8, 10, 12]
    assert runs == [[4], [5, 6]]  # later ones wait for the next run

    async def broken(take: Take[int]) -> list[int]:
        raise RuntimeError("disk full")

    failing: Coalescer[int, int] = Coalescer(broken)
    outcomes = await asyncio.gather(*(failing(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert await coalesce(7) == 14  # a failure does not stick


async def test_a_run_finishes_for_the_others_when_its_leader_is_cancelled() -> None:
    runs: list[list[int]] = []

    async def double(take: Take[int]) -> list[int]:
        await asyncio.sleep(0.005)
        items = await take()
        runs.append(items)
        await asyncio.sleep(0.01)
        return [2 * i for i in items]

    coalesce: Coalescer[int, int] = Coalescer(double)
    leader = asyncio.ensure_future(coalesce(1))
    await asyncio.sleep(0)
    other = asyncio.ensure_future(coalesce(2))
    await asyncio.sleep(0.01)
    assert runs == [[1, 2]]
    leader.cancel()  # its client went away while the run works for both
    async with asyncio.timeout(1):
        assert await other == 4
    assert leader.cancelled()


async def test_page_json_equals_the_event_json_for_every_shape(hub: VoiceHub) -> None:
    """Attachments, empty and nested data, Unicode, whole and fractional seconds, HTML."""
    customer = await hub.customer_with("+14155550184")
    cid = customer["id"]
    at = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)
    shapes = [
        Event(
            Channel.NOTE, Kind.NOTE, Direction.INTERNAL, at, text="whole second", customer_id=cid
        ),
        Event(
            Channel.EMAIL,
            Kind.MESSAGE,
            Direction.INBOUND,
            at + timedelta(microseconds=120),
            external_id="<m1@example.org>",
            status="received",
            subject='Grüße \u2603 "quoted"',
            text="line\nbreak",
            html="<p>hi</p>",
            thread_key="<m1@example.org>",
            sender=Identity(IdentityKind.EMAIL, "ann@example.org"),
            recipient=Identity(IdentityKind.EMAIL, "us@example.org"),
            attachments=(Attachment("a.txt", "text/plain", content=b"hello"),),
            data={"nested": {"list": [1, 2.5, None, True], "s": "x"}, "big": 2**53},
            customer_id=cid,
        ),
    ]
    async with hub.db.write() as conn:
        await ingest_batch(conn, shapes, region="US", files=FileStore(hub.settings.data_dir))
    async with hub.db.read() as conn:
        page, _ = await store.page(conn, cid, limit=50)
        as_json = await calls.first_pages_json(conn, [cid], limit=50)
    assert len(page) == 2 and page[0].attachments
    assert as_json[cid] == [e.to_json() for e in page]


async def test_call_rows_written_together_are_stored_as_one_at_a_time(hub: VoiceHub) -> None:
    call = await hub.sandbox.call_hub("+14155550185", OUR_NUMBER)
    await hub.sandbox.settle()
    at = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)
    async with hub.db.read() as conn:
        event = await store.find_event(conn, "voice", call.sid)
    assert event is not None
    row: dict[str, Any] = {
        "event_id": event.id,
        "direction": "outbound-dial",
        "state": "ringing",
        "caller": "+14155550185",
        "callee": None,
        "parent_sid": call.sid,
        "at": at,
    }
    async with hub.db.write() as conn:
        await calls.open_call(conn, call_sid="CA-alone", **row)
        await calls.open_many(conn, [{**row, "call_sid": "CA-together"}])
        await calls.open_many(conn, [{**row, "call_sid": "CA-together", "state": "completed"}])
        stored = (
            await conn.exec_driver_sql(
                "SELECT * FROM calls WHERE call_sid IN ('CA-alone', 'CA-together') "
                "ORDER BY call_sid"
            )
        ).all()
    # As the database holds them (SQLite: text), but for the key and the write time.
    alone, together = (dict(r._mapping) for r in stored)
    for found in (alone, together):
        found.pop("call_sid")
        found.pop("updated_at")
    assert alone == together  # and the second open_many of a stored call changed nothing
