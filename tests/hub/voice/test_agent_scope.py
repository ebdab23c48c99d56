"""Calls and the agent: their own phone rings first, and they see their teams' calls only."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from hub.auth import add_agent
from tests.hub.test_cli import assert_usage_error, run, sqlite_url
from tests.hub.voice.conftest import OUR_NUMBER, VOICE, StartHub, VoiceHub, fixture_form
from timeline.schema import events


def _as(hub: VoiceHub, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.tokens[role]}"}


async def _me(hub: VoiceHub) -> str:
    response = await hub.api.get("/api/v1/agents/me")
    assert response.status_code == 200, response.text
    agent_id: str = response.json()["id"]
    return agent_id


def _agent_legs(hub: VoiceHub) -> list[dict[str, Any]]:
    return [c for c in hub.sandbox.calls.values() if c["direction"] == "outbound-api"]


async def test_the_agents_own_phone_rings_instead_of_the_global_one(start_hub: StartHub) -> None:
    async with start_hub(twilio_agent_phone="+14155550166") as hub:
        customer = await hub.customer_with("(212) 555-0160")
        agent_id = await _me(hub)
        patched = await hub.api.patch(
            f"/api/v1/agents/{agent_id}",
            json={"phone": "(415) 555-0177"},
            headers=_as(hub, "admin"),
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["phone"] == "+14155550177"

        response = await hub.api.post("/api/v1/calls", json={"customer_id": customer["id"]})
        assert response.status_code == 202, response.text
        await hub.sandbox.settle()
        assert [leg["to"] for leg in _agent_legs(hub)] == ["+14155550177"]

        # Named in the request, a phone wins over the agent's own.
        response = await hub.api.post(
            "/api/v1/calls", json={"customer_id": customer["id"], "agent_phone": "+14155550188"}
        )
        assert response.status_code == 202, response.text
        await hub.sandbox.settle()
        assert sorted(leg["to"] for leg in _agent_legs(hub)) == ["+14155550177", "+14155550188"]

        # Cleared: the global setting rings.
        cleared = await hub.api.patch(
            f"/api/v1/agents/{agent_id}", json={"phone": None}, headers=_as(hub, "admin")
        )
        assert cleared.status_code == 200 and cleared.json()["phone"] is None
        response = await hub.api.post("/api/v1/calls", json={"customer_id": customer["id"]})
        assert response.status_code == 202, response.text
        await hub.sandbox.settle()
        assert "+14155550166" in [leg["to"] for leg in _agent_legs(hub)]

        bad = await hub.api.patch(
            f"/api/v1/agents/{agent_id}", json={"phone": "not a phone"}, headers=_as(hub, "admin")
        )
        assert bad.status_code == 422, bad.text
        mine = await hub.api.patch(f"/api/v1/agents/{agent_id}", json={"phone": "+14155550177"})
        assert mine.status_code == 403


async def test_no_phone_anywhere_is_refused(hub: VoiceHub) -> None:
    customer = await hub.customer_with("(212) 555-0160")
    response = await hub.api.post("/api/v1/calls", json={"customer_id": customer["id"]})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "agent_phone"
    assert await hub.count(events) == 0
    assert _agent_legs(hub) == []


async def test_calls_of_another_teams_customer_are_out_of_sight(hub: VoiceHub) -> None:
    async with hub.db.write() as conn:
        _, red_token = await add_agent(conn, email="red@hub.example", role="agent", team="red")
    red = {"Authorization": f"Bearer {red_token}"}
    theirs = await hub.customer_with("+14155550100", name="Red customer")
    assigned = await hub.api.patch(
        f"/api/v1/customers/{theirs['id']}", json={"teams": ["red"]}, headers=_as(hub, "supervisor")
    )
    assert assigned.status_code == 200, assigned.text
    ours = await hub.customer_with("+14155550111", name="Unassigned")

    # The red customer phones (the fixture's caller), and so does the unassigned one.
    assert (await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))).status_code == 200
    other = fixture_form(
        "voice_inbound_call.txt",
        CallSid="CA" + "7" * 32,
        From="+14155550111",
        Caller="+14155550111",
    )
    assert (await hub.post(VOICE, other)).status_code == 200

    def owners(answer: Any) -> list[str]:
        assert answer.status_code == 200, answer.text
        return sorted(c["customer"]["id"] for c in answer.json()["items"])

    # The agent without a team sees unassigned customers only; red sees both; a
    # supervisor sees every call.
    assert owners(await hub.api.get("/api/v1/calls/active")) == [ours["id"]]
    assert owners(await hub.api.get("/api/v1/calls/active", headers=red)) == sorted(
        [ours["id"], theirs["id"]]
    )
    assert len(owners(await hub.api.get("/api/v1/calls/active", headers=_as(hub, "supervisor"))))

    # Click-to-call a customer out of sight: 404 as for an unknown one, nothing placed.
    before = await hub.count(events)
    refused = await hub.api.post(
        "/api/v1/calls", json={"customer_id": theirs["id"], "agent_phone": "+14155550177"}
    )
    assert refused.status_code == 404, refused.text
    assert await hub.count(events) == before
    placed = await hub.api.post(
        "/api/v1/calls",
        json={"customer_id": theirs["id"], "agent_phone": "+14155550177"},
        headers=red,
    )
    assert placed.status_code == 202, placed.text
    await hub.sandbox.settle()
    assert [leg["to"] for leg in _agent_legs(hub)] == ["+14155550177"]


async def test_a_recording_of_another_teams_customer_is_not_found(start_hub: StartHub) -> None:
    async with start_hub() as hub:
        customer = await hub.customer_with("+14155550150")
        await hub.sandbox.call_hub("+14155550150", OUR_NUMBER)
        await hub.sandbox.settle()
        (event,) = [e for e in await hub.timeline(customer["id"]) if e["channel"] == "voice"]
        url = event["data"]["recording"]["url"]
        assert (await hub.api.get(url)).status_code == 200
        assigned = await hub.api.patch(
            f"/api/v1/customers/{customer['id']}",
            json={"teams": ["red"]},
            headers=_as(hub, "supervisor"),
        )
        assert assigned.status_code == 200, assigned.text
        hidden = await hub.api.get(url)
        assert hidden.status_code == 404, hidden.text
        assert (await hub.api.get(url, headers=_as(hub, "supervisor"))).status_code == 200


def test_agent_add_stores_the_agents_phone(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    args = ("agent", "add", "p@b.example", "--role", "agent", "--phone", "(415) 555-0177")
    result = run(tmp_path, *args, HUB_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        (phone,) = conn.execute("SELECT phone FROM agents WHERE email = 'p@b.example'").fetchone()
    assert phone == "+14155550177"
    bad = ("agent", "add", "q@b.example", "--role", "agent", "--phone", "nope")
    assert_usage_error(run(tmp_path, *bad, HUB_DATABASE_URL=url), "phone")


async def test_route_numbers_rings_the_agents_own_phones(start_hub: StartHub) -> None:
    async with start_hub(twilio_voice_route="numbers", twilio_voice_agent_numbers=()) as hub:
        agent_id = await _me(hub)
        patched = await hub.api.patch(
            f"/api/v1/agents/{agent_id}",
            json={"phone": "(415) 555-0177"},
            headers=_as(hub, "admin"),
        )
        assert patched.status_code == 200, patched.text
        answer = await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
        assert answer.status_code == 200, answer.text
        numbers = [n.text for n in ET.fromstring(answer.text).findall("Dial/Number")]
        assert numbers == ["+14155550177"]
