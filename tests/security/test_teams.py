"""RELIABILITY 36: an agent cannot read another team's customer by guessing ids.

Every object is checked: a team-B customer is 404 to an agent of team A on every route
(never 403, so ids cannot be probed), search and exact lookups do not reveal it, and the
live stream does not deliver its events. Unassigned customers are seen by every agent;
supervisors and admins see all.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from hub.app import create_app
from hub.auth import add_agent
from tests.hub.conftest import Hub, assert_error, hub_settings, make_agents, serving
from tests.hub.test_stream import sse_messages
from timeline.db import Database


async def team_tokens(db: Database) -> dict[str, str]:
    """Agents of team A and team B; team -> token."""
    tokens = {}
    async with db.write() as conn:
        for team in ("A", "B"):
            _, tokens[team] = await add_agent(
                conn, email=f"{team.lower()}@hub.example", role="agent", team=team
            )
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_another_team_s_customer_is_not_found_anywhere(hub: Hub) -> None:
    teams = await team_tokens(hub.db)
    a, b = bearer(teams["A"]), bearer(teams["B"])
    secret = await hub.create_customer(name="Zelda Secret", phones=["+4791234567"])
    mine = await hub.create_customer(name="Zelda Mine")
    open_ = await hub.create_customer(name="Zelda Open")
    sid = secret["id"]
    # Only supervisors set teams.
    assert_error(await hub.api.patch(f"/api/v1/customers/{sid}", json={"teams": ["B"]}), 403)
    sup = hub.auth("supervisor")
    set_b = await hub.api.patch(f"/api/v1/customers/{sid}", json={"teams": ["B"]}, headers=sup)
    assert set_b.status_code == 200, set_b.text
    assert set_b.json()["teams"] == ["B"]
    set_a = await hub.api.patch(
        f"/api/v1/customers/{mine['id']}", json={"teams": ["A"]}, headers=sup
    )
    assert set_a.status_code == 200
    note = await hub.api.post(f"/api/v1/customers/{sid}/notes", json={"text": "hi"}, headers=b)
    assert note.status_code == 201, note.text
    upload = await hub.api.post(
        f"/api/v1/customers/{sid}/documents",
        files={"file": ("a.txt", b"secret", "text/plain")},
        headers=b,
    )
    assert upload.status_code == 201, upload.text
    document_url = upload.json()["document"]["url"]

    # Team A: 404 everywhere, the same answer as for an id that does not exist.
    for method, path, body in [
        ("GET", f"/api/v1/customers/{sid}", None),
        ("PATCH", f"/api/v1/customers/{sid}", {"name": "x"}),
        ("GET", f"/api/v1/customers/{sid}/timeline", None),
        ("POST", f"/api/v1/customers/{sid}/notes", {"text": "x"}),
        ("GET", f"/api/v1/customers/{sid}/documents", None),
        ("GET", f"/api/v1/customers/{sid}/merges", None),
        ("POST", f"/api/v1/customers/{sid}/merge", {"other_id": open_["id"]}),
        ("POST", f"/api/v1/customers/{open_['id']}/merge", {"other_id": sid}),
        ("GET", document_url, None),
    ]:
        response = await hub.api.request(method, path, json=body, headers=a)
        assert_error(response, 404, "not_found")
    upload_a = await hub.api.post(
        f"/api/v1/customers/{sid}/documents",
        files={"file": ("b.txt", b"x", "text/plain")},
        headers=a,
    )
    assert_error(upload_a, 404)

    # Search and lookups do not reveal it; the agent's own and unassigned ones are found.
    found = await hub.api.get("/api/v1/customers", params={"q": "zelda"}, headers=a)
    assert {c["name"] for c in found.json()["items"]} == {"Zelda Mine", "Zelda Open"}
    listed = await hub.api.get("/api/v1/customers", headers=a)
    assert sid not in {c["id"] for c in listed.json()["items"]}
    by_phone = await hub.api.get("/api/v1/customers", params={"phone": "+47 912 34 567"}, headers=a)
    assert by_phone.json()["items"] == []
    by_text = await hub.api.get("/api/v1/customers", params={"q": "91234567"}, headers=a)
    assert by_text.json()["items"] == []

    # Team B, and an agent with no team, see what they should.
    assert (await hub.api.get(f"/api/v1/customers/{sid}", headers=b)).status_code == 200
    no_team = await hub.api.get("/api/v1/customers", params={"q": "zelda"})
    assert {c["name"] for c in no_team.json()["items"]} == {"Zelda Open"}
    # Supervisors and admins see everything, and can unassign.
    for role in ("supervisor", "admin"):
        everyone = await hub.api.get(
            "/api/v1/customers", params={"q": "zelda"}, headers=hub.auth(role)
        )
        assert len(everyone.json()["items"]) == 3
    cleared = await hub.api.patch(f"/api/v1/customers/{sid}", json={"teams": []}, headers=sup)
    assert cleared.json()["teams"] == []
    assert (await hub.api.get(f"/api/v1/customers/{sid}", headers=a)).status_code == 200


async def test_the_stream_delivers_only_visible_customers(
    api_database_url: str, tmp_path: Path
) -> None:
    settings = hub_settings(api_database_url, tmp_path / "files")
    app = create_app(settings, run_workers=False, sse_heartbeat=0.5)
    async with serving(app) as base_url:
        db = app.state.services.db
        tokens = await make_agents(db)
        teams = await team_tokens(db)
        sup = bearer(tokens["supervisor"])
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
            ids = {}
            for name, team in [("hidden", "B"), ("ours", "A"), ("open", None)]:
                made = await client.post("/api/v1/customers", json={"name": name}, headers=sup)
                ids[name] = made.json()["id"]
                if team:
                    patched = await client.patch(
                        f"/api/v1/customers/{ids[name]}", json={"teams": [team]}, headers=sup
                    )
                    assert patched.status_code == 200
            async with client.stream("GET", "/api/v1/stream", headers=bearer(teams["A"])) as stream:
                assert stream.status_code == 200
                messages = sse_messages(stream.aiter_lines())
                async with asyncio.timeout(3):
                    assert await anext(messages) == (None, "connected")
                for name in ("hidden", "ours", "open", "hidden"):
                    note = await client.post(
                        f"/api/v1/customers/{ids[name]}/notes",
                        json={"text": f"about {name}"},
                        headers=sup,
                    )
                    assert note.status_code == 201
                received: list[Any] = []
                async with asyncio.timeout(3):
                    async for event, data in messages:
                        if event == "timeline":
                            received.append(json.loads(data)["customer_id"])
                        if len(received) == 2:
                            break
                # Two pings' worth of waiting: the hidden ones never come.
                async with asyncio.timeout(1.2):
                    async for event, data in messages:
                        if event == "timeline":
                            received.append(json.loads(data)["customer_id"])
                        if event is None and data == "ping":
                            break
    assert received == [ids["ours"], ids["open"]]


async def test_messages_to_another_team_s_customer_are_not_found(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/hub.db"
    settings = hub_settings(
        url,
        tmp_path / "files",
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token="secret",
        twilio_numbers=("+14155550199",),
        twilio_api_base="http://127.0.0.1:9",  # never called: no workers run
    )
    (tmp_path / "files").mkdir()
    app = create_app(settings, run_workers=False)
    async with app.router.lifespan_context(app):
        db = app.state.services.db
        tokens = await make_agents(db)
        teams = await team_tokens(db)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
            sup = bearer(tokens["supervisor"])
            made = await client.post(
                "/api/v1/customers", json={"phones": ["+14155550100"]}, headers=sup
            )
            cid = made.json()["id"]
            await client.patch(f"/api/v1/customers/{cid}", json={"teams": ["B"]}, headers=sup)
            body = {"customer_id": cid, "channel": "sms", "text": "hello"}
            denied = await client.post("/api/v1/messages", json=body, headers=bearer(teams["A"]))
            assert_error(denied, 404, "not_found")
            sent = await client.post("/api/v1/messages", json=body, headers=bearer(teams["B"]))
            assert sent.status_code == 202, sent.text
