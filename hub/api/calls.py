"""Calls for agents: the calls ringing now, click-to-call, and playing recordings.

Each is scoped to the agent's teams (``Ctx.teams``, as the customer API and the stream
are): a call of a customer the agent may not see is not listed, cannot be placed and its
recording is not found (404, never 403: ids cannot be probed).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import JSONResponse, Response

from hub import schemas
from hub.errors import ApiError
from hub.routing import Ctx, Endpoint, Param, int_param
from hub.voice_outbound import Refused, place_call, queue_call
from hub.voice_outbound import agent_phone as agent_phone_of
from hub.voice_recording import stream_recording
from hub.voice_state import call_json
from timeline import calls, store
from timeline import customers as customer_ops
from timeline.events import Channel
from timeline.idempotency import Answer
from timeline.identity import normalize_phone


async def active_calls(ctx: Ctx) -> Response:
    """Calls ringing or in progress, oldest first, each with its customer.

    Read from the database: a refreshed console, a restarted hub and every other agent
    see the same list (each only the calls of customers of their teams).
    """
    limit = int_param(ctx.request, "limit", 100, 1, 200)
    async with ctx.services.db.read() as conn:
        rows = await calls.open_calls(conn, limit=limit, teams=ctx.teams)
        people = await calls.customers_many(conn, [event.customer_id for _, event in rows])
        items = [call_json(event, people.get(event.customer_id)) for _, event in rows]
    return JSONResponse({"items": items, "next": None})


async def start_call(ctx: Ctx) -> Response:
    """Click-to-call: ring the agent's phone, then bridge them to the customer.

    The answer is 202 with the outbound call event (``queued``); Twilio is asked to ring
    the agent right after it is stored, and the call's progress (or a refusal, as
    ``failed`` with ``data.error``) follows on the timeline and the live stream.
    ``agent_phone`` defaults to the agent's own phone (``agent add --phone``,
    ``PATCH /api/v1/agents/{id}``), else to ``TWILIO_AGENT_PHONE``.
    """
    body = await ctx.body(schemas.CallIn)
    services = ctx.services
    settings = services.settings
    if services.twilio is None:
        raise ApiError(422, "not_configured", "calls need the twilio channel to be configured")
    if body.agent_phone:
        phone: str | None = normalize_phone(
            body.agent_phone, settings.default_region, field="agent_phone"
        )
    else:
        async with services.db.read() as conn:
            phone = await agent_phone_of(conn, ctx.agent.id)
        if phone is None and settings.twilio_agent_phone:
            phone = normalize_phone(
                settings.twilio_agent_phone, settings.default_region, field="agent_phone"
            )
    if phone is None:
        raise ApiError(
            422,
            "invalid_field",
            "agent_phone: give one (the agent has no phone and TWILIO_AGENT_PHONE is not set)",
            field="agent_phone",
        )
    agent_phone = phone

    async def op(conn: AsyncConnection) -> Answer:
        await ctx.require_visible(conn, body.customer_id)
        try:
            event = await queue_call(
                conn, settings, customer_id=body.customer_id, agent_id=ctx.agent.id
            )
        except Refused as exc:
            raise ApiError(422, exc.code, str(exc), field=exc.field) from None
        ctx.after_commit.append(lambda: place_call(services, event, agent_phone))
        return Answer(202, event.to_json())

    return await ctx.write(op)


async def play_recording(ctx: Ctx) -> Response:
    """The audio of a call's recording (WAV), streamed from the provider.

    ``Range`` is honoured (206). The provider's URL is never shown.
    """
    event_id = ctx.path("event_id")
    async with ctx.services.db.read() as conn:
        event = await store.get_event(conn, event_id)
        visible = await customer_ops.is_visible(conn, event.customer_id, ctx.teams)
    if event.channel != Channel.VOICE.value or not visible:
        raise ApiError(404, "not_found", f"no call {event_id!r}")
    recording = event.data.get("recording")
    if not isinstance(recording, dict) or recording.get("status") != "completed":
        raise ApiError(404, "no_recording", "this call has no recording")
    settings = ctx.services.settings
    if not settings.channel_enabled("twilio"):
        raise ApiError(502, "provider_unavailable", "the twilio channel is not configured")
    return await stream_recording(
        settings, str(recording["sid"]), range_header=ctx.request.headers.get("range")
    )


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/calls/active",
        active_calls,
        "Calls ringing or in progress, with their customers",
        "agent",
        {200: ("the calls", schemas.CallList), 401: ("no valid token", schemas.Error)},
        params=(
            Param(
                "limit",
                "query",
                {"type": "integer", "minimum": 1, "maximum": 200, "default": 100},
                "most calls to list",
            ),
        ),
        tag="calls",
    ),
    Endpoint(
        "POST",
        "/api/v1/calls",
        start_call,
        "Click-to-call: ring the agent's phone, then the customer's",
        "agent",
        {
            202: ("the queued call event", schemas.EventOut),
            400: ("malformed JSON", schemas.Error),
            401: ("no valid token", schemas.Error),
            404: ("no such customer", schemas.Error),
            409: ("the customer was merged into another", schemas.Error),
            422: (
                "an invalid field, no phone, no agent phone, or calls not configured",
                schemas.Error,
            ),
        },
        body=schemas.CallIn,
        idempotent=True,
        tag="calls",
    ),
    Endpoint(
        "GET",
        "/api/v1/calls/{event_id}/recording",
        play_recording,
        "Play a call's recording (audio streamed through the hub)",
        "agent",
        {
            200: ("the audio (audio/x-wav)", "binary"),
            206: ("the requested range of the audio", "binary"),
            401: ("no valid token", schemas.Error),
            404: ("no such call, or it has no recording", schemas.Error),
            502: ("the provider could not be reached or refused", schemas.Error),
        },
        params=(Param("event_id", "path", {"type": "string"}, "the call's event id"),),
        tag="calls",
    ),
]
