"""The live stream (Server-Sent Events) through a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from hub.app import create_app
from tests.hub.conftest import (
    OpenApiChecker,
    assert_error,
    checking_hook,
    hub_settings,
    make_agents,
    serving,
)


async def sse_messages(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str | None, str]]:
    """(event, data) of each message; comments come as (None, comment text)."""
    event: str | None = None
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith(":"):
            yield None, line[1:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


async def test_a_note_arrives_on_the_stream(api_database_url: str, tmp_path: Path) -> None:
    settings = hub_settings(api_database_url, tmp_path / "files")
    app = create_app(settings, run_workers=False, sse_heartbeat=0.5)
    async with serving(app) as base_url:
        tokens = await make_agents(app.state.services.db)
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as plain:
            checker = OpenApiChecker((await plain.get("/openapi.json")).json())
        auth = {"Authorization": f"Bearer {tokens['agent']}"}
        async with (
            httpx.AsyncClient(
                base_url=base_url, timeout=5, event_hooks={"response": [checking_hook(checker)]}
            ) as client,
            httpx.AsyncClient(
                base_url=base_url, timeout=5, event_hooks={"response": [checking_hook(checker)]}
            ) as watcher,
        ):
            response = await client.get("/api/v1/stream")
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].lower().startswith("bearer")

            created = await client.post("/api/v1/customers", json={"name": "Ann"}, headers=auth)
            assert created.status_code == 201
            customer_id = created.json()["id"]

            async with watcher.stream("GET", "/api/v1/stream", headers=auth) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                assert stream.headers["cache-control"] == "no-cache"
                messages = sse_messages(stream.aiter_lines())
                async with asyncio.timeout(3):
                    assert await anext(messages) == (None, "connected")
                note = await client.post(
                    f"/api/v1/customers/{customer_id}/notes",
                    json={"text": "live from the test"},
                    headers=auth,
                )
                assert note.status_code == 201, note.text
                received: list[Any] = []
                async with asyncio.timeout(3):
                    async for event, data in messages:
                        if event is None:
                            continue  # heartbeat
                        received.append((event, json.loads(data)))
                        if event == "timeline":
                            break
                assert received == [("timeline", note.json())]
                # The stream stays open: heartbeats keep coming while nothing happens.
                async with asyncio.timeout(3):
                    assert await anext(messages) == (None, "ping")
