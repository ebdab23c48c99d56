"""Live updates for agents over Server-Sent Events.

https://html.spec.whatwg.org/multipage/server-sent-events.html: ``event: timeline`` carries
an event JSON, ``event: call`` a screen pop. A comment line every ``heartbeat`` seconds
keeps proxies from closing an idle stream and lets the server notice a gone client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from hub import schemas
from hub.routing import Ctx, Endpoint
from timeline.records import StoredEvent

HEARTBEAT_SECONDS = 15.0


def sse(event: str, data: Any) -> str:
    """One SSE message (the JSON has no raw newlines, so one data line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def stream(ctx: Ctx) -> Response:
    """Server-Sent Events: ``timeline`` (event JSON) and ``call`` (screen pop)."""
    publisher = ctx.services.publisher
    heartbeat = float(ctx.request.app.state.sse_heartbeat)

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
