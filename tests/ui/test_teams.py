"""Team scoping in the console (SQLite and PostgreSQL), as in the API (docs/security.md).

An agent of team A is logged in. A customer of team B is refused everywhere with the
same 404 as an unknown id: search, the 360 view, timeline fragments, email bodies,
edits, the composer, merges, the active calls and their banners, the sandbox phone; its
events and screen pops never reach the agent's live stream. Team A's customers and the
unassigned ones are seen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from hub.app import create_app
from hub.auth import add_agent
from hub.voice_state import screen_pop
from tests.hub.conftest import hub_settings, serving
from tests.hub.test_stream import sse_messages
from tests.ui.test_sessions import BASE, PASSWORD, hidden_token
from timeline import calls as call_ops
from timeline import customers as customer_ops
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind, utcnow
from timeline.ingest import ingest_batch
from timeline.records import StoredEvent
from timeline.schema import events

OURS = "+14155550199"
PHONES = {"foreign": "+14155550111", "ours": "+14155550122", "open": "+14155550133"}
TEAMS = {"foreign": ["B"], "ours": ["A"], "open": []}


@dataclasses.dataclass
class World:
    """The app, one customer per visibility and their calls and emails."""

    app: Starlette
    ids: dict[str, str]
    emails: dict[str, StoredEvent]
    calls: dict[str, StoredEvent]


async def build(app: Starlette) -> World:
    """Customers 'foreign' (team B), 'ours' (team A), 'open' (no team), each with an inbound
    SMS, an HTML email and a ringing call; the agent of team A with a console password."""
    ids: dict[str, str] = {}
    emails: dict[str, StoredEvent] = {}
    calls: dict[str, StoredEvent] = {}
    now = utcnow()
    async with app.state.services.db.write() as conn:
        await add_agent(conn, email="ada@hub.example", role="agent", team="A", password=PASSWORD)
        for name, phone in PHONES.items():
            who = Identity(IdentityKind.PHONE, phone)
            line = Identity(IdentityKind.PHONE, OURS)
            first = await ingest_batch(
                conn,
                [
                    Event(
                        channel=Channel.SMS,
                        kind=Kind.MESSAGE,
                        direction=Direction.INBOUND,
                        occurred_at=now,
                        external_id=f"SM{name:0>32}",
                        status="received",
                        text=f"Zebra crossing for {name}",
                        sender=who,
                        recipient=line,
                    )
                ],
                region="US",
            )
            stored = first.outcomes[0].event
            assert stored is not None
            cid = ids[name] = stored.customer_id
            await customer_ops.update(conn, cid, name=f"Zed {name.title()}")
            await customer_ops.set_teams(conn, cid, TEAMS[name])
            more = await ingest_batch(
                conn,
                [
                    Event(
                        channel=Channel.EMAIL,
                        kind=Kind.MESSAGE,
                        direction=Direction.INBOUND,
                        occurred_at=now,
                        external_id=f"<{name}@mail.test>",
                        status="received",
                        subject=f"Private to {name}",
                        text="secret",
                        html=f"<p>secret of {name}</p>",
                        thread_key=f"<{name}@mail.test>",
                        customer_id=cid,
                    ),
                    Event(
                        channel=Channel.VOICE,
                        kind=Kind.CALL,
                        direction=Direction.INBOUND,
                        occurred_at=now,
                        external_id=f"CA{name:0>32}",
                        status="ringing",
                        sender=who,
                        recipient=line,
                    ),
                ],
                region="US",
            )
            email, call = (o.event for o in more.outcomes)
            assert email is not None and call is not None and call.customer_id == cid
            emails[name], calls[name] = email, call
            await call_ops.open_call(
                conn,
                call_sid=call.external_id or "",
                event_id=call.id,
                direction="inbound",
                state="ringing",
                caller=phone,
                callee=OURS,
            )
    return World(app, ids, emails, calls)


@pytest.fixture
async def world(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    app: Starlette = create_app(hub_settings(database_url, tmp_path / "files"), run_workers=False)
    async with app.router.lifespan_context(app):
        yield await build(app)


async def logged_in(http: httpx.AsyncClient) -> str:
    """Log the agent of team A in; the session's CSRF token."""
    form = await http.get("/ui/login")
    answer = await http.post(
        "/ui/login",
        data={
            "email": "ada@hub.example",
            "password": PASSWORD,
            "csrf_token": hidden_token(form.text),
        },
    )
    assert answer.status_code == 303, answer.text
    return hidden_token((await http.get("/ui/calls")).text)


async def test_another_team_s_customer_is_refused_on_every_page(world: World) -> None:
    ids, emails = world.ids, world.emails
    foreign = ids["foreign"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=world.app), base_url=BASE, headers={"Origin": BASE}
    ) as http:
        token = await logged_in(http)

        # Search: by words, by an exact phone in another format, and the recent list.
        for q in ("Zed", "zebra crossing", ""):
            found = await http.get("/ui/search", params={"q": q})
            assert f"/ui/customers/{ids['ours']}" in found.text, q
            assert f"/ui/customers/{ids['open']}" in found.text, q
            assert foreign not in found.text and "Zed Foreign" not in found.text, q
        exact = await http.get("/ui/", params={"q": "(415) 555-0111"})
        assert exact.status_code == 200 and foreign not in exact.text

        # Pages and fragments: 404, exactly as for an id that does not exist.
        unknown = "0" * 32
        for cid, expected in ((ids["ours"], 200), (ids["open"], 200), (foreign, 404)):
            page = await http.get(f"/ui/customers/{cid}")
            assert page.status_code == expected, (cid, page.status_code)
            more = await http.get(f"/ui/customers/{cid}/timeline", headers={"HX-Request": "true"})
            assert more.status_code == expected
        assert (await http.get(f"/ui/customers/{unknown}")).status_code == 404
        refused = await http.get(f"/ui/customers/{foreign}")
        assert "secret" not in refused.text and "Zed Foreign" not in refused.text
        assert refused.text == (await http.get(f"/ui/customers/{unknown}")).text
        for view in ("email", "body"):
            mine = await http.get(f"/ui/events/{emails['ours'].id}/{view}")
            assert mine.status_code == 200 and "Zed" not in mine.text
            theirs = await http.get(f"/ui/events/{emails['foreign'].id}/{view}")
            assert theirs.status_code == 404 and "secret of foreign" not in theirs.text

        # Writes: nothing changes on the foreign customer.
        writes = [
            ("send", {"channel": "note", "text": "forged note"}),
            ("identities", {"action": "add", "kind": "email", "value": "x@example.org"}),
            ("identities", {"action": "remove", "kind": "phone", "value": PHONES["foreign"]}),
            ("attributes", {"key": "plan", "value": "free"}),
            ("attributes", {"name": "Renamed"}),
            ("merge", {"other": ids["ours"]}),
        ]
        for action, data in writes:
            answer = await http.post(
                f"/ui/customers/{foreign}/{action}", data={"csrf_token": token, **data}
            )
            assert answer.status_code == 404, (action, answer.status_code)
        # Merging the foreign customer into ours, by id or by phone, finds no one.
        for other in (foreign, PHONES["foreign"]):
            merged = await http.post(
                f"/ui/customers/{ids['ours']}/merge", data={"csrf_token": token, "other": other}
            )
            assert "No customer" in merged.text and "Merged" not in merged.text
        async with world.app.state.services.db.read() as conn:
            customer = await customer_ops.get(conn, foreign)
            notes = await conn.execute(sa.select(sa.func.count()).where(events.c.channel == "note"))
            assert notes.scalar_one() == 0
        assert customer.name == "Zed Foreign" and customer.merged_into is None
        assert customer.phones == [PHONES["foreign"]] and customer.emails == []
        assert "plan" not in customer.attributes

        # Active calls and the banners on every page: ours and the open one only.
        sids = {name: str(call.external_id) for name, call in world.calls.items()}
        for path in ("/ui/calls", "/ui/", f"/ui/customers/{ids['ours']}"):
            text = (await http.get(path)).text
            assert sids["ours"] in text and sids["open"] in text, path
            assert sids["foreign"] not in text, path
            assert PHONES["foreign"] not in text and "Zed Foreign" not in text, path


async def test_the_console_stream_carries_only_visible_customers(
    database_url: str, tmp_path: Path
) -> None:
    settings = hub_settings(database_url, tmp_path / "files")
    app = create_app(settings, run_workers=False, sse_heartbeat=0.5)
    async with serving(app) as url:
        world = await build(app)
        services = app.state.services
        async with httpx.AsyncClient(base_url=url, headers={"Origin": url}, timeout=5) as http:
            await logged_in(http)
            async with http.stream("GET", "/ui/stream") as stream:
                assert stream.status_code == 200
                messages = sse_messages(stream.aiter_lines())
                async with asyncio.timeout(3):
                    assert await anext(messages) == (None, "connected")
                async with services.db.read() as conn:
                    pops = {n: await screen_pop(conn, world.calls[n]) for n in world.calls}
                for name in ("foreign", "ours", "foreign", "open"):
                    services.publisher.publish("timeline", world.emails[name])
                    services.publisher.publish("call", pops[name])
                received: list[tuple[str, Any]] = []
                async with asyncio.timeout(3):
                    async for event, data in messages:
                        if event in ("timeline", "call"):
                            received.append((event, json.loads(data)))
                        if len(received) == 4:
                            break
                # Two heartbeats of waiting: nothing of the foreign customer comes.
                async with asyncio.timeout(1.5):
                    async for event, data in messages:
                        if event in ("timeline", "call"):
                            received.append((event, json.loads(data)))
                        if event is None and data == "ping":
                            break
    timeline = [data["customer_id"] for event, data in received if event == "timeline"]
    calls = [data["key"] for event, data in received if event == "call"]
    assert timeline == [world.ids["ours"], world.ids["open"]]
    assert calls == [world.calls["ours"].external_id, world.calls["open"].external_id]
    assert all("secret of foreign" not in data["html"] for _, data in received)
