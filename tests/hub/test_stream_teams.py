"""Team scoping of the live stream right after a customer's teams change.

Each published item is judged by its customer's teams as they are at or after the item's
commit (``timeline.publish.Audience``), never by what an earlier item of the same customer
allowed: a customer moved to another team is not delivered to their former team's very
next message, and a customer moved in is delivered at once.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from hub.api.stream import Visibility
from hub.app import create_app
from tests.hub.conftest import hub_settings, make_agents, serving
from tests.hub.test_stream import sse_messages
from tests.security.test_teams import bearer, team_tokens
from timeline import customers as customer_ops
from timeline.db import Database
from timeline.publish import Audience, Publisher, audiences


async def test_a_move_between_teams_applies_to_the_next_message(
    api_database_url: str, tmp_path: Path
) -> None:
    settings = hub_settings(api_database_url, tmp_path / "files")
    app = create_app(settings, run_workers=False, sse_heartbeat=0.5)
    async with serving(app) as base_url:
        db = app.state.services.db
        sup = bearer((await make_agents(db))["supervisor"])
        team_a = bearer((await team_tokens(db))["A"])
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:

            async def customer(name: str, teams: list[str]) -> str:
                made = await client.post("/api/v1/customers", json={"name": name}, headers=sup)
                cid: str = made.json()["id"]
                await move(cid, teams)
                return cid

            async def move(cid: str, teams: list[str]) -> None:
                moved = await client.patch(
                    f"/api/v1/customers/{cid}", json={"teams": teams}, headers=sup
                )
                assert moved.status_code == 200, moved.text

            async def note(cid: str, text: str) -> None:
                made = await client.post(
                    f"/api/v1/customers/{cid}/notes", json={"text": text}, headers=sup
                )
                assert made.status_code == 201, made.text

            mover = await customer("mover", ["A"])
            marker = await customer("marker", [])
            async with client.stream("GET", "/api/v1/stream", headers=team_a) as stream:
                messages = sse_messages(stream.aiter_lines())
                async with asyncio.timeout(3):
                    assert await anext(messages) == (None, "connected")

                async def texts_until(last: str) -> list[str]:
                    seen: list[str] = []
                    async with asyncio.timeout(3):
                        async for event, data in messages:
                            if event == "timeline":
                                seen.append(json.loads(data)["text"])
                                if seen[-1] == last:
                                    return seen
                    raise AssertionError("the stream ended")

                await note(mover, "1 while ours")
                assert await texts_until("1 while ours") == ["1 while ours"]
                await move(mover, ["B"])
                await note(mover, "2 after the move to B")
                await note(marker, "3 marker")
                assert await texts_until("3 marker") == ["3 marker"]
                # Moved back (and into two teams): delivered at once, no waiting period.
                await move(mover, ["A", "B"])
                await note(mover, "4 back in A")
                assert await texts_until("4 back in A") == ["4 back in A"]
                await move(mover, ["C"])
                await note(mover, "5 in C")
                await move(mover, [])
                await note(mover, "6 unassigned")
                assert await texts_until("6 unassigned") == ["6 unassigned"]


def _item(customer_id: str) -> dict[str, Any]:
    return {"customer": {"id": customer_id}}


async def test_audiences_agree_with_is_visible(db: Database) -> None:
    async with db.write() as conn:
        ids = {
            name: await customer_ops.create(conn, name=name) for name in ("a", "ab", "b", "open")
        }
        await customer_ops.set_teams(conn, ids["a"], ["A"])
        await customer_ops.set_teams(conn, ids["ab"], ["A", "B"])
        await customer_ops.set_teams(conn, ids["b"], ["B"])
    ids["missing"] = "no-such-customer"
    async with db.read() as conn:
        found = await audiences(conn, ids.values())
        assert found[ids["ab"]] == Audience(True, frozenset({"A", "B"}))
        assert found[ids["missing"]] == Audience(False, frozenset())
        for scope in (None, frozenset(), frozenset({"A"}), frozenset({"B", "C"})):
            for cid in ids.values():
                expected = await customer_ops.is_visible(conn, cid, scope)
                assert found[cid].admits(scope) == expected, (cid, scope)


async def test_each_item_is_judged_by_its_own_audience(db: Database) -> None:
    async with db.write() as conn:
        mover = await customer_ops.create(conn, name="mover")
        await customer_ops.set_teams(conn, mover, ["A"])
    publisher = Publisher()
    visibility = Visibility(db, frozenset({"A"}), publisher)
    first, second, third = _item(mover), _item(mover), _item(mover)
    nobody = {"customer": None, "call_sid": "CA1"}
    assert await visibility.admitted([("call", first), ("call", nobody)]) == [
        ("call", first),
        ("call", nobody),
    ]
    assert visibility.reads == 1
    async with db.write() as conn:
        await customer_ops.set_teams(conn, mover, ["B"])
    # The same customer a moment later: read again, not taken from the first item.
    assert await visibility.admitted([("call", second)]) == []
    assert visibility.reads == 2
    # An audience the publisher gave is used as is (no read), and shared by other streams.
    with publisher.subscribe():
        publisher.publish("call", third, Audience(True, frozenset({"A"})))
    other = Visibility(db, frozenset({"B"}), publisher)
    assert await visibility.admitted([("call", third)]) == [("call", third)]
    assert await other.admitted([("call", third), ("call", second)]) == [("call", second)]
    assert visibility.reads == 2 and other.reads == 0
    # Supervisors see everything without reading.
    everyone = Visibility(db, None, publisher)
    assert await everyone.admitted([("call", _item("missing"))]) == [("call", _item("missing"))]
    assert everyone.reads == 0
