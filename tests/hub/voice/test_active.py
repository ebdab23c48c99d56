"""Calls ringing or in progress: stored, so a refresh, a restart or another agent sees them."""

from __future__ import annotations

import httpx

from hub.app import create_app
from tests.hub.voice.conftest import (
    PARENT_SID,
    STATUS,
    VOICE,
    VoiceHub,
    fixture_form,
)
from timeline.schema import calls, events


async def test_active_calls_survive_a_new_app_on_the_same_database(hub: VoiceHub) -> None:
    await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
    await hub.post(STATUS, fixture_form("voice_child_leg_in_progress.txt"))
    (call,) = (await hub.api.get("/api/v1/calls/active")).json()["items"]
    assert call["external_id"] == PARENT_SID
    assert (call["state"], call["answered_by"], call["missed"]) == (
        "in-progress",
        "client:alice",
        False,
    )
    assert call["customer"]["phones"] == ["+14155550100"]

    # Another hub process (or this one restarted) on the same database, another agent.
    other = create_app(hub.settings, run_workers=False)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://other") as client:
            seen = await client.get(
                "/api/v1/calls/active",
                headers={"Authorization": f"Bearer {hub.tokens['supervisor']}"},
            )
    assert seen.status_code == 200
    assert seen.json() == {"items": [call], "next": None}

    await hub.post(STATUS, fixture_form("voice_status_completed.txt"))
    assert (await hub.api.get("/api/v1/calls/active")).json() == {"items": [], "next": None}
    assert (await hub.raw.get("/api/v1/calls/active")).status_code == 401


async def test_erasing_a_customer_takes_their_calls(hub: VoiceHub) -> None:
    await hub.post(VOICE, fixture_form("voice_inbound_call.txt"))
    (call,) = (await hub.api.get("/api/v1/calls/active")).json()["items"]
    response = await hub.api.delete(
        f"/api/v1/customers/{call['customer']['id']}",
        headers={"Authorization": f"Bearer {hub.tokens['admin']}"},
    )
    assert response.status_code == 200, response.text
    assert await hub.count(events) == 0
    assert await hub.count(calls) == 0
    assert (await hub.api.get("/api/v1/calls/active")).json()["items"] == []
