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
from timeline.db import Database
from timeline.publish import Prepared, Publisher, Subscription, audiences
from timeline.records import StoredEvent

HEARTBEAT_SECONDS = 15.0
#: At most this many waiting messages are checked together (one read for all of them).
BATCH = 256


def customer_of(item: Any) -> str | None:
    """The customer an item of the stream is about (None: no one, e.g. an unknown caller)."""
    if isinstance(item, StoredEvent | Prepared):
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
    """Which published items one stream's agent may see (object-level access, OWASP ASVS
    5.0 V8.2.2).

    Each item is judged by its own :class:`~timeline.publish.Audience` (its customer's
    teams read at or after the item's commit: given by the publisher, or read here once
    for all streams and all the messages waiting), never by what an earlier item of the
    same customer allowed: a customer moved to another team is not delivered to their
    former team's next message.
    """

    def __init__(self, db: Database, teams: frozenset[str] | None, publisher: Publisher) -> None:
        self.db = db
        self.teams = teams
        self.publisher = publisher
        self.reads = 0

    async def admitted(self, messages: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """Those of ``messages`` (``(topic, item)``, in order) the agent may see."""
        if self.teams is None:
            return messages
        unknown: dict[str, list[Any]] = {}
        for _, item in messages:
            cid = customer_of(item)
            if cid is not None and self.publisher.audience_of(item) is None:
                unknown.setdefault(cid, []).append(item)
        if unknown:
            self.reads += 1
            async with self.db.read() as conn:
                found = await audiences(conn, unknown)
            for cid, items in unknown.items():
                for item in items:
                    self.publisher.remember(item, found[cid])
        kept = []
        for message in messages:
            if customer_of(message[1]) is None:
                kept.append(message)  # about nobody (a withheld number): every agent
                continue
            audience = self.publisher.audience_of(message[1])
            if audience is not None and audience.admits(self.teams):
                kept.append(message)
        return kept

    async def allows(self, item: Any) -> bool:
        """Whether this one item may be sent."""
        return bool(await self.admitted([("", item)]))


def waiting(sub: Subscription, first: tuple[str, Any]) -> tuple[list[tuple[str, Any]], bool]:
    """``first`` and what else is already queued (up to :data:`BATCH`); True: the end."""
    batch = [first]
    while len(batch) < BATCH:
        try:
            message = sub.queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        if message is None:
            return batch, True
        batch.append(message)
    return batch, False


def sse(event: str, data: Any) -> str:
    """One SSE message (the JSON has no raw newlines, so one data line)."""
    text = data.text if isinstance(data, Prepared) else json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {text}\n\n"


async def stream(ctx: Ctx) -> Response:
    """Server-Sent Events: ``timeline`` (event JSON) and ``call`` (screen pop)."""
    publisher = ctx.services.publisher
    heartbeat = float(ctx.request.app.state.sse_heartbeat)
    visibility = Visibility(ctx.services.db, ctx.teams, publisher)

    async def messages() -> AsyncIterator[str]:
        with publisher.subscribe() as sub:
            yield ": connected\n\n"
            while True:
                try:
                    # A timeout on this task, not wait_for's task around each get: one
                    # pass of the event loop less between a publish and its write.
                    async with asyncio.timeout(heartbeat):
                        message = await sub.queue.get()
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if message is None:  # the publisher dropped us or is shutting down
                    return
                batch, ended = waiting(sub, message)
                # The batch's messages in one write (twenty calls at once: one socket
                # write instead of forty).
                text = "".join(
                    sse(topic, item.to_json() if isinstance(item, StoredEvent) else item)
                    for topic, item in await visibility.admitted(batch)
                )
                if text:
                    yield text
                if ended:
                    return

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
