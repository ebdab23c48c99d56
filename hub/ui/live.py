"""The console's live stream and the demo sandbox page.

``GET /ui/stream`` is the console's Server-Sent Events stream, authenticated by the
session cookie (an ``EventSource`` cannot send an ``Authorization`` header, and a token
in the URL would end up in logs and history). It carries what ``/api/v1/stream`` carries,
rendered: ``event: timeline`` is ``{"id", "customer_id", "html"}`` (the event's list
item, inserted or replaced in place by ``console.js``), ``event: call`` is ``{"key",
"state", "html"}`` (the screen-pop banner). The session is checked again at every
heartbeat, so a stream ends with its session. Like ``/api/v1/stream`` it carries only what
the agent's teams may see: events and screen pops of other teams' customers are not sent
(``hub.api.stream.Visibility``; calls from unknown numbers go to everyone).

The sandbox page (demo mode only) lets a person play a customer through the built-in
Twilio sandbox at ``TWILIO_API_BASE``: text the hub, phone it, and read the hub's
replies on a simulated phone. The hub proxies those requests server-side.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hub.api.stream import Visibility, waiting
from hub.routing import team_scope
from hub.sessions import Session
from hub.ui.guard import console, console_of, field, form_of, refused
from hub.ui.render import group_threads
from timeline import customers as customer_ops
from timeline.errors import TimelineError
from timeline.events import Identity, IdentityKind
from timeline.identity import normalize_phone
from timeline.publish import Prepared
from timeline.records import StoredEvent


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@console
async def stream(request: Request, session: Session) -> Response:
    """The console's live stream (session cookie)."""
    c = console_of(request)
    publisher = c.services.publisher
    heartbeat = float(request.app.state.sse_heartbeat)
    cookie = request.cookies.get(c.cookie)
    templates = c.templates
    visibility = Visibility(c.services.db, team_scope(session.agent), publisher)

    def render(topic: str, item: Any) -> str | None:
        if isinstance(item, Prepared):  # a screen pop written as JSON once for all streams
            item = item.data
        if isinstance(item, StoredEvent):
            html = templates.get_template("_timeline_items.html").render(
                groups=group_threads([item]), next_url=None, csrf=session.csrf_token
            )
            return _sse("timeline", {"id": item.id, "customer_id": item.customer_id, "html": html})
        if topic == "call" and isinstance(item, dict):
            html = templates.get_template("_call.html").render(call=item)
            return _sse(
                "call",
                {"key": item.get("external_id") or "", "state": item.get("state"), "html": html},
            )
        return None

    async def messages() -> AsyncIterator[str]:
        with publisher.subscribe() as sub:
            yield "retry: 2000\n: connected\n\n"
            while True:
                try:
                    message = await asyncio.wait_for(sub.queue.get(), heartbeat)
                except TimeoutError:
                    if await c.sessions.get(cookie, touch=False) is None:
                        yield "event: ended\ndata: {}\n\n"
                        return
                    yield ": ping\n\n"
                    continue
                if message is None:
                    return
                batch, ended = waiting(sub, message)
                for topic, item in await visibility.admitted(batch):
                    text = render(topic, item)
                    if text is not None:
                        yield text
                if ended:
                    return

    return StreamingResponse(
        messages(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# -- the demo sandbox ----------------------------------------------------------------------


def _sandbox_url(request: Request) -> str | None:
    settings = console_of(request).services.settings
    return settings.twilio_api_base.rstrip("/") if settings.twilio_sandbox else None


@console
async def sandbox_page(request: Request, session: Session) -> Response:
    """Play a customer: text the hub, phone it, read its replies."""
    from hub.ui.views import page

    if _sandbox_url(request) is None:
        return refused(request, 404, "The sandbox is on only in demo mode.")
    settings = console_of(request).services.settings
    ours = settings.twilio_numbers[0] if settings.twilio_numbers else ""
    number = request.query_params.get("number", "+14155550100")
    return await page(request, session, "sandbox.html", ours=ours, number=number)


async def _proxy(request: Request, path: str, payload: dict[str, Any]) -> tuple[bool, str]:
    base = _sandbox_url(request)
    assert base is not None
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(base + path, json=payload)
    except httpx.HTTPError as exc:
        return False, f"The sandbox could not be reached ({type(exc).__name__})."
    if answer.status_code >= 400:
        try:
            detail = answer.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = answer.text[:200]
        return False, f"The sandbox refused: {detail}"
    return True, ""


async def _numbers(request: Request) -> tuple[str, str] | str:
    settings = console_of(request).services.settings
    form = await form_of(request)
    try:
        from_ = normalize_phone(field(form, "from"), settings.default_region, field="from")
        to = normalize_phone(field(form, "to"), settings.default_region, field="to")
    except TimelineError as exc:
        return str(exc)
    return from_, to


@console
async def sandbox_sms(request: Request, session: Session) -> Response:
    """The simulated customer texts the hub."""
    c = console_of(request)
    if _sandbox_url(request) is None:
        return refused(request, 404, "The sandbox is on only in demo mode.")
    numbers = await _numbers(request)
    if isinstance(numbers, str):
        return c.render(request, "_flash.html", error=numbers)
    body = field(await form_of(request), "body")
    ok, error = await _proxy(
        request, "/sandbox/sms", {"from": numbers[0], "to": numbers[1], "body": body}
    )
    return c.render(request, "_flash.html", message="Sent to the hub." if ok else "", error=error)


@console
async def sandbox_call(request: Request, session: Session) -> Response:
    """The simulated customer phones the hub."""
    c = console_of(request)
    if _sandbox_url(request) is None:
        return refused(request, 404, "The sandbox is on only in demo mode.")
    numbers = await _numbers(request)
    if isinstance(numbers, str):
        return c.render(request, "_flash.html", error=numbers)
    answer = field(await form_of(request), "answer") == "yes"
    payload = {"from": numbers[0], "to": numbers[1], "answer": answer}
    ok, error = await _proxy(request, "/sandbox/calls", payload)
    return c.render(request, "_flash.html", message="Calling the hub." if ok else "", error=error)


@console
async def sandbox_phone(request: Request, session: Session) -> Response:
    """The simulated phone's messages (polled by the sandbox page)."""
    c = console_of(request)
    base = _sandbox_url(request)
    if base is None:
        return refused(request, 404, "The sandbox is on only in demo mode.")
    settings = c.services.settings
    try:
        number = normalize_phone(
            request.query_params.get("number", ""), settings.default_region, field="number"
        )
    except TimelineError as exc:
        return c.render(request, "_flash.html", error=str(exc))
    async with c.services.db.read() as conn:
        owner = await customer_ops.find(conn, Identity(IdentityKind.PHONE, number))
        if owner and not await customer_ops.is_visible(conn, owner, team_scope(session.agent)):
            return refused(request, 404, "No such customer.")  # another team's customer
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.get(f"{base}/sandbox/phones/{number}/messages")
        items = answer.json().get("messages", [])
    except (httpx.HTTPError, ValueError) as exc:
        return c.render(request, "_flash.html", error=f"The sandbox: {type(exc).__name__}")
    return c.render(request, "_phone.html", number=number, messages=items)
