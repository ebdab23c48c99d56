"""Screen pops of calls arriving together are read together, and read the same."""

from __future__ import annotations

import asyncio
import dataclasses

from hub.voice_state import Coalescer, screen_pop, screen_pops
from tests.hub.voice.conftest import OUR_NUMBER, VoiceHub
from timeline import calls, store
from timeline import customers as customer_ops


async def test_group_reads_equal_one_at_a_time(hub: VoiceHub) -> None:
    ann = await hub.customer_with("+14155550181", name="Ann")
    bob = await hub.customer_with("+14155550182", name="Bob")
    await hub.api.patch(
        f"/api/v1/customers/{bob['id']}",
        json={"add": {"emails": ["bob@example.org"]}},
    )
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
        for customer_id in ids[:-1]:
            one = await customer_ops.get(conn, customer_id)
            # Consent comes in no particular order from either.
            assert sorted(many[customer_id].consent, key=str) == sorted(one.consent, key=str)
            assert dataclasses.replace(many[customer_id], consent=one.consent) == one
            page, _ = await store.page(conn, customer_id, limit=50)
            assert pages[customer_id] == page
        assert "no-such-customer" not in many and pages["no-such-customer"] == []
        assert len(pages[ann["id"]]) == 50
        assert many[bob["id"]].consent and many[bob["id"]].emails == ["bob@example.org"]
        together = await screen_pops(conn, known)
        alone = [await screen_pop(conn, e) for e in known]
        for pop in together + alone:
            pop["customer"]["consent"].sort(key=str)
        assert together == alone


async def test_waiting_work_is_done_together_and_failures_reach_everyone() -> None:
    runs: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        runs.append(items)
        await asyncio.sleep(0.01)
        return [2 * i for i in items]

    coalesce: Coalescer[int, int] = Coalescer(double)
    assert await asyncio.gather(*(coalesce(i) for i in range(5))) == [0, 2, 4, 6, 8]
    assert runs == [[0], [1, 2, 3, 4]]  # the first ran alone, the rest waited for it

    async def broken(items: list[int]) -> list[int]:
        raise RuntimeError("disk full")

    failing: Coalescer[int, int] = Coalescer(broken)
    outcomes = await asyncio.gather(*(failing(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert await coalesce(7) == 14  # a failure does not stick
