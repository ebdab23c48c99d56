"""Live updates for agents over Server-Sent Events.

https://html.spec.whatwg.org/multipage/server-sent-events.html: ``event: timeline`` carries
an event JSON, ``event: call`` a screen pop. A comment line every ``heartbeat`` seconds
keeps proxies from closing an idle stream and lets the server notice a gone client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from hub import schemas
from hub.routing import Ctx, Endpoint
from timeline import customers as customer_ops
from timeline.db import Database
from timeline.records import StoredEvent

HEARTBEAT_SECONDS = 15.0
#: How long a customer's visibility is remembered per stream: a change of teams
#: reaches open streams within this time.
VISIBILITY_TTL = 10.0


def customer_of(item: Any) -> str | None:
    """The customer an item of the stream is about (None: no one, e.g. an unknown caller)."""
    if isinstance(item, StoredEvent):
        return item.customer_id
    if isinstance(item, dict):
        customer = item.get("customer")
        if isinstance(customer, dict):
            cid = customer.get("id")
            if isinstance(cid, str):
                return cid
        found = item.get("customer_id")
        return found if isinstance(found, str) else None
    return None


class Visibility:
    """Which customers one stream's agent may see, cached briefly per customer."""

    def __init__(self, db: Database, teams: frozenset[str] | None) -> None:
        self.db = db
        self.teams = teams
        self._seen: dict[str, tuple[float, bool]] = {}

    async def allows(self, item: Any) -> bool:
        """Whether the item may be sent (object-level access, OWASP ASVS 5.0 V8.2.2)."""
        if self.teams is None:
            return True
        customer_id = customer_of(item)
        if customer_id is None:
            return True
        now = time.monotonic()
        cached = self._seen.get(customer_id)
        if cached is not None and now - cached[0] < VISIBILITY_TTL:
            return cached[1]
        async with self.db.read() as conn:
            visible = await customer_ops.is_visible(conn, customer_id, self.teams)
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[customer_id] = (now, visible)
        return visible


def sse(event: str, data: Any) -> str:
    """One SSE message (the JSON has no raw newlines, so one data line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def stream(ctx: Ctx) -> Response:
    """Server-Sent Events: ``timeline`` (event JSON) and ``call`` (screen pop)."""
    publisher = ctx.services.publisher
    heartbeat = float(ctx.request.app.state.sse_heartbeat)
    visibility = Visibility(ctx.services.db, ctx.teams)

    async def messages() -> AsyncIterator[str]:
        with publisher.subscribe() as sub:
            yield ": connected\n\n"
            while True:
                try:
                    message = await asyncio.wait_for(sub.queue.get(), heartbeat)
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if message is None:  # the publisher dropped us or is shutting down
                    return
                topic, item = message
                if not await visibility.allows(item):
                    continue
                if isinstance(item, StoredEvent):
                    yield sse(topic, item.to_json())
                else:
                    yield sse(topic, item)

    return StreamingResponse(
        messages(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/stream",
        stream,
        "Live updates (Server-Sent Events): `event: timeline` and `event: call`",
        "agent",
        {
            200: ("an endless text/event-stream", "event-stream"),
            401: ("no valid token", schemas.Error),
        },
        tag="live",
    ),
]
