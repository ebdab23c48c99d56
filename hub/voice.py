"""Twilio's Voice webhooks: incoming calls, call status, recordings, and our TwiML steps.

Configure the Twilio number with ``HUB_PUBLIC_URL/webhooks/twilio/voice`` as its voice
URL and ``HUB_PUBLIC_URL/webhooks/twilio/voice/status`` as its call status callback (for
``completed`` at least). The other paths are handed to Twilio inside our TwiML, each with
``?event=<id>`` so that its request finds the call without a lookup:

=====================================  ============================================
``POST /webhooks/twilio/voice``        incoming call: store, screen pop, routing TwiML
``POST /webhooks/twilio/voice/status`` status of the call or of a leg we dialled
``POST /webhooks/twilio/voice/recording``  a recording or its transcription is ready
``POST /webhooks/twilio/voice/dial``   after ``<Dial>``/``<Enqueue>``/``<Record>``:
                                       voicemail or hang up
``POST /webhooks/twilio/voice/bridge`` click-to-call: the agent answered, dial the
                                       customer
``POST /webhooks/twilio/voice/agent``  queue mode: an agent's browser client calls in
                                       to take the next caller (``<Dial><Queue>``)
``POST /webhooks/twilio/voice/dequeued``  queue mode: ``<Queue url>``, the agent named
                                       in its ``agent`` parameter answered the caller
=====================================  ============================================

In queue mode, set the Voice URL of the TwiML App the agents' Voice SDK uses to
``HUB_PUBLIC_URL/webhooks/twilio/voice/agent``.

Every request is checked as the SMS webhooks are (``hub.twilio_webhooks.signed_payload``:
413 over the size limit, 403 without a valid X-Twilio-Signature, nothing stored), a
malformed form is 400, and a callback about a call we do not hold is logged and answered
200 (Twilio cannot fix it by retrying).

An incoming call is ingested through the group writer (an unknown caller becomes a new
customer), its live state is stored (``timeline.calls``), and the screen pop is published
as ``event: call`` *before* the TwiML is returned: the agent sees who is calling while
their phone starts ringing. A caller whose number is withheld resolves to nobody: the
call is still routed, with a pop that has no customer, but it is on no timeline.
https://www.twilio.com/docs/voice/twiml
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from channels.twilio import twiml, voice
from hub.services import Services
from hub.twilio_webhooks import json_error, signed_payload
from hub.voice_outbound import agent_phones
from hub.voice_state import (
    WEBHOOK_AGENT,
    WEBHOOK_DEQUEUED,
    WEBHOOK_DIAL,
    WEBHOOK_RECORDING,
    WEBHOOK_STATUS,
    Applied,
    Incoming,
    anonymous_pop,
    apply_dequeued,
    apply_dial_result,
    apply_recording,
    apply_status,
    read_pop_audience,
    routing,
    webhook_url,
)
from timeline import calls
from timeline.events import Channel, Direction
from timeline.ingest import attach_external_id
from timeline.publish import Audience

log = logging.getLogger(__name__)

#: Said to an agent whose click-to-call cannot be bridged (the customer is gone).
NOT_CONNECTED = "Sorry, this call cannot be connected."


def _twiml(xml: str) -> Response:
    return Response(xml, media_type="text/xml")


def _incoming(request: Request) -> Incoming:
    work: Incoming | None = getattr(request.app.state, "voice_incoming", None)
    if work is None:
        services = _services(request)
        work = request.app.state.voice_incoming = Incoming(
            services.db,
            services.publisher,
            region=services.settings.default_region,
            files=services.files,
        )
    return work


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _publish(
    services: Services, applied: Applied, pop: tuple[dict[str, Any], Audience] | None
) -> None:
    """The changed call event, and its screen pop with the audience read beside it (after
    the change's commit, so it holds for the event as well)."""
    if pop is None:
        services.publisher.publish("timeline", applied.event)
        return
    services.publisher.publish("timeline", applied.event, pop[1])
    services.publisher.publish("call", *pop)


def _urls(services: Services, event_id: str | None) -> dict[str, str]:
    settings = services.settings
    query = {"event": event_id} if event_id else {}
    return {
        "status_callback": webhook_url(settings, WEBHOOK_STATUS, **query),
        "recording_callback": webhook_url(settings, WEBHOOK_RECORDING, **query),
        "dial_action": webhook_url(settings, WEBHOOK_DIAL, **query, step="dial"),
        "voicemail_action": webhook_url(settings, WEBHOOK_DIAL, **query, step="recorded"),
    }


#: Stands for the call's event id in the routing TwiML made once per process.
_EVENT_SLOT = "EVENTIDSLOT"


#: Seconds the agents' own phones are remembered for ringing (route ``numbers`` without
#: ``TWILIO_VOICE_AGENT_NUMBERS``): a phone set or cleared rings within this time.
AGENT_PHONES_TTL = 30.0


async def _routing(request: Request) -> twiml.Routing:
    """The settings' routing; route ``numbers`` without ``TWILIO_VOICE_AGENT_NUMBERS``
    rings the agents' own phones (``agent add --phone``, ``PATCH /api/v1/agents/{id}``)."""
    services = _services(request)
    settings = services.settings
    base = routing(settings)
    if settings.twilio_voice_route != "numbers" or settings.twilio_voice_agent_numbers:
        return base
    now = time.monotonic()
    cached: tuple[float, tuple[str, ...]] | None = getattr(
        request.app.state, "voice_agent_phones", None
    )
    if cached is None or now - cached[0] > AGENT_PHONES_TTL:
        async with services.db.read() as conn:
            cached = request.app.state.voice_agent_phones = (now, await agent_phones(conn))
    return dataclasses.replace(base, numbers=cached[1])


async def _route_twiml(request: Request, event_id: str) -> str:
    """The routing TwiML of a stored call: the routing's document with its event id.

    Built once per routing (the SDK's ``VoiceResponse`` and five signed-URL helpers cost
    more than the rest of the answer), then the id, hex digits, fills every URL's slot.
    """
    services = _services(request)
    plan = await _routing(request)
    documents: dict[twiml.Routing, str] | None = getattr(
        request.app.state, "voice_route_twiml", None
    )
    if documents is None or len(documents) > 64:
        documents = request.app.state.voice_route_twiml = {}
    document = documents.get(plan)
    if document is None:
        document = documents[plan] = twiml.route_call(plan, **_urls(services, _EVENT_SLOT))
    return document.replace(_EVENT_SLOT, event_id)


async def inbound_call(request: Request) -> Response:
    """An incoming call: store it, publish the screen pop, answer the routing TwiML."""
    services = _services(request)
    parsed = await signed_payload(request, services, voice.parse_inbound_call)
    if isinstance(parsed, Response):
        return parsed
    (event,) = parsed
    sid = event.external_id
    assert sid is not None
    # Stored and popped with the calls arriving beside it (hub.voice_state.Incoming): its
    # pop is published when this returns.
    arrival = await _incoming(request)(event)
    if arrival.event is None:
        log.info(
            "call %s from a caller who is nobody (%s): routed, not stored",
            sid,
            arrival.outcome.reason,
        )
        assert event.sender is not None and event.recipient is not None
        services.publisher.publish(
            "call", anonymous_pop(sid, event.sender.value, event.recipient.value)
        )
        return _twiml(twiml.route_call(await _routing(request), **_urls(services, None)))
    log.info("incoming call %s: %s, event %s", sid, arrival.outcome.kind, arrival.event.id)
    return _twiml(await _route_twiml(request, arrival.event.id))


async def call_status(request: Request) -> Response:
    """A status callback of a call or a dialled leg: settle the call's one event."""
    services = _services(request)
    parsed = await signed_payload(request, services, voice.parse_call_status)
    if isinstance(parsed, Response):
        return parsed
    update = parsed
    hint = request.query_params.get("event") or None
    async with services.db.write() as conn:
        applied = await apply_status(conn, update, hint=hint)
    if applied is None:
        log.info("status callback for unknown call %s ignored", update.call_sid)
    elif applied.changed:
        _publish(services, applied, await read_pop_audience(services.db, applied.event))
    return Response(status_code=200)


async def recording(request: Request) -> Response:
    """A recording or transcription callback: attach it to the call's event."""
    services = _services(request)
    parsed = await signed_payload(request, services, voice.parse_recording_callback)
    if isinstance(parsed, Response):
        return parsed
    update = parsed
    hint = request.query_params.get("event") or None
    async with services.db.write() as conn:
        applied = await apply_recording(conn, update, hint=hint)
    if applied is None:
        log.info("recording callback for unknown call %s ignored", update.call_sid)
    elif applied.changed:
        _publish(services, applied, None)
    return Response(status_code=200)


async def dial_result(request: Request) -> Response:
    """What follows ``<Dial>``, ``<Enqueue>`` or ``<Record>``: voicemail or hang up.

    After ``<Dial>``/``<Enqueue>`` (``step=dial``) the caller is offered voicemail unless
    they were connected; after ``<Record>`` (``step=recorded``) or a bridge
    (``step=bridge``) the call ends.
    """
    services = _services(request)
    parsed = await signed_payload(request, services, voice.parse_dial_result)
    if isinstance(parsed, Response):
        return parsed
    result = parsed
    step = request.query_params.get("step", "dial")
    hint = request.query_params.get("event") or None
    # A caller who hung up while agents rang or in the queue is gone: nobody to record.
    gone = result.dial_status == "canceled" or result.queue_result == "hangup"
    offer_voicemail = step == "dial" and not result.connected and not gone
    async with services.db.write() as conn:
        applied = await apply_dial_result(
            conn,
            result,
            hint=hint,
            hanging_up=not offer_voicemail,
            queue=services.settings.twilio_voice_queue,
        )
    if applied is not None and applied.changed:
        _publish(services, applied, await read_pop_audience(services.db, applied.event))
    if not offer_voicemail:
        return _twiml(twiml.hangup())
    urls = _urls(services, applied.event.id if applied else None)
    return _twiml(
        twiml.voicemail(
            services.settings.twilio_voicemail_prompt,
            action=urls["voicemail_action"],
            recording_callback=urls["recording_callback"],
        )
    )


async def bridge(request: Request) -> Response:
    """Click-to-call: the agent answered; dial the customer from our number."""
    services = _services(request)
    parsed = await signed_payload(request, services, voice.parse_call_status)
    if isinstance(parsed, Response):
        return parsed
    update = parsed
    event_id = request.query_params.get("event")
    if not event_id:
        return json_error(400, "bad_request", "event: missing from the bridge URL")
    settings = services.settings
    applied: Applied | None = None
    async with services.db.write() as conn:
        event = await calls.lock_event(conn, event_id)
        usable = (
            event is not None
            and event.channel == Channel.VOICE.value
            and event.direction == Direction.OUTBOUND.value
            and event.recipient is not None
            and event.sender is not None
            and event.external_id in (None, update.call_sid)
        )
        if usable:
            assert event is not None
            if event.external_id is None:
                await attach_external_id(conn, event.id, Channel.VOICE, update.call_sid)
            applied = await apply_status(conn, update, hint=event.id)
    if not usable or event is None:
        log.warning("bridge of call %s: no outbound call event %s", update.call_sid, event_id)
        return _twiml(twiml.hangup(NOT_CONNECTED))
    if applied is not None and applied.changed:
        _publish(services, applied, await read_pop_audience(services.db, applied.event))
    assert event.recipient is not None and event.sender is not None
    query = {"event": event.id}
    return _twiml(
        twiml.bridge(
            event.recipient,
            caller_id=event.sender,
            status_callback=webhook_url(settings, WEBHOOK_STATUS, **query),
            action=webhook_url(settings, WEBHOOK_DIAL, **query, step="bridge"),
            record=settings.twilio_voice_record,
            recording_callback=webhook_url(settings, WEBHOOK_RECORDING, **query),
        )
    )


async def agent_client(request: Request) -> Response:
    """Queue mode: an agent's browser client calls in; connect them to the next caller.

    The ``<Queue url>`` names the agent (the client identity Twilio reports as ``From``),
    signed with the rest of that URL, so the dequeue request says who answered.
    """
    services = _services(request)
    parsed = await signed_payload(request, services, voice.parse_agent_client)
    if isinstance(parsed, Response):
        return parsed
    url = webhook_url(services.settings, WEBHOOK_DEQUEUED, agent=parsed)
    return _twiml(twiml.dequeue(services.settings.twilio_voice_queue, url=url))


async def dequeued(request: Request) -> Response:
    """Queue mode: ``<Queue url>``: the agent took this caller; record who answered."""
    services = _services(request)
    parsed = await signed_payload(request, services, voice.parse_dequeued)
    if isinstance(parsed, Response):
        return parsed
    agent = request.query_params.get("agent")
    if not agent:
        return json_error(400, "bad_request", "agent: missing from the dequeue URL")
    async with services.db.write() as conn:
        applied = await apply_dequeued(conn, parsed, agent=agent)
    if applied is None:
        log.info("dequeue of unknown call %s ignored", parsed.call_sid)
    elif applied.changed:
        _publish(services, applied, await read_pop_audience(services.db, applied.event))
    return _twiml(twiml.empty())


ROUTES = [
    Route("/webhooks/twilio/voice", inbound_call, methods=["POST"]),
    Route(WEBHOOK_STATUS, call_status, methods=["POST"]),
    Route(WEBHOOK_RECORDING, recording, methods=["POST"]),
    Route(WEBHOOK_DIAL, dial_result, methods=["POST"]),
    Route("/webhooks/twilio/voice/bridge", bridge, methods=["POST"]),
    Route(WEBHOOK_AGENT, agent_client, methods=["POST"]),
    Route(WEBHOOK_DEQUEUED, dequeued, methods=["POST"]),
]
