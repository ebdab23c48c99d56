"""Click-to-call: ring the agent's phone first, then bridge them to the customer.

``POST /api/v1/calls`` writes the outbound call event (status ``queued``) in one
transaction (:func:`queue_call`); once it is committed, :func:`place_call` asks Twilio to
call the agent (https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource)
with ``Url`` = the hub's ``/webhooks/twilio/voice/bridge?event=...``. When the agent
answers, Twilio fetches that TwiML, which dials the customer from our number
(``channels.twilio.voice.bridge``). Every callback URL carries the event id, so the call's
legs find their event even before the CallSid is recorded here. The customer's number
never goes into a URL.

The Twilio request is made outside any database transaction (a slow provider must not
hold SQLite's write lock). If Twilio refuses, the event is marked ``failed`` with the
error; if no answer comes at all, it is marked ``failed`` too, and a callback that
proves the call was placed after all settles it from the facts (``hub.voice_state``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from channels.twilio import voice
from channels.twilio.errors import ApiError as TwilioApiError
from channels.twilio.errors import TransportError
from config import Settings
from hub.services import Services
from hub.voice_state import WEBHOOK_BRIDGE, WEBHOOK_STATUS, read_pop, settle, webhook_url
from timeline import calls
from timeline.customers import require_active
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind, utcnow
from timeline.identity import normalize_phone
from timeline.ingest import attach_external_id, ingest_batch
from timeline.records import StoredEvent
from timeline.schema import agents, events, identities

log = logging.getLogger(__name__)


class Refused(Exception):
    """The call cannot be placed; ``code``, ``field`` and the message say why."""

    def __init__(self, code: str, message: str, field: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


@dataclasses.dataclass(frozen=True, slots=True)
class Numbers:
    """Our number the customer sees, and the customer's number we dial."""

    ours: str
    customer: str


async def set_phone(conn: AsyncConnection, agent_id: str, raw: str | None, region: str) -> None:
    """Store the agent's own phone (E.164; None clears it); InvalidIdentity if not a number."""
    phone = normalize_phone(raw, region) if raw is not None else None
    await conn.execute(agents.update().where(agents.c.id == agent_id).values(phone=phone))


async def agent_phone(conn: AsyncConnection, agent_id: str) -> str | None:
    """The agent's own phone, if one is stored."""
    found = await conn.execute(sa.select(agents.c.phone).where(agents.c.id == agent_id))
    phone: str | None = found.scalar_one_or_none()
    return phone


async def agent_phones(conn: AsyncConnection) -> tuple[str, ...]:
    """The own phones of the agents who are not disabled, oldest agent first."""
    rows = await conn.execute(
        sa.select(agents.c.phone)
        .where(agents.c.phone.is_not(None), agents.c.disabled_at.is_(None))
        .order_by(agents.c.created_at, agents.c.id)
    )
    return tuple(dict.fromkeys(rows.scalars()))


async def numbers_for(conn: AsyncConnection, settings: Settings, customer_id: str) -> Numbers:
    """The customer's phone they last called with (else their first), and our number
    they know from that call (else the first of ``TWILIO_NUMBERS``)."""
    phones = list(
        (
            await conn.execute(
                sa.select(identities.c.value)
                .where(
                    identities.c.customer_id == customer_id,
                    identities.c.kind == IdentityKind.PHONE.value,
                )
                .order_by(identities.c.created_at, identities.c.id)
            )
        ).scalars()
    )
    if not phones:
        raise Refused("no_phone", "the customer has no phone number", "customer_id")
    ours = settings.twilio_numbers
    numbers = Numbers(ours[0], phones[0])
    last = (
        await conn.execute(
            sa.select(events.c.direction, events.c.sender, events.c.recipient)
            .where(events.c.customer_id == customer_id, events.c.channel == Channel.VOICE.value)
            .order_by(events.c.occurred_at.desc(), events.c.id.desc())
            .limit(1)
        )
    ).one_or_none()
    if last is not None:
        inbound = last.direction == Direction.INBOUND.value
        our_side, their_side = (
            (last.recipient, last.sender) if inbound else (last.sender, last.recipient)
        )
        numbers = Numbers(
            our_side if our_side in ours else numbers.ours,
            their_side if their_side in phones else numbers.customer,
        )
    return numbers


async def queue_call(
    conn: AsyncConnection, settings: Settings, *, customer_id: str, agent_id: str
) -> StoredEvent:
    """Write the outbound call event (``queued``) on the customer's timeline."""
    await require_active(conn, customer_id)
    numbers = await numbers_for(conn, settings, customer_id)
    event = Event(
        channel=Channel.VOICE,
        kind=Kind.CALL,
        direction=Direction.OUTBOUND,
        occurred_at=utcnow(),
        status="queued",
        sender=Identity(IdentityKind.PHONE, numbers.ours),
        recipient=Identity(IdentityKind.PHONE, numbers.customer),
        customer_id=customer_id,
        data={"agent": agent_id, "click_to_call": True, "answered": False},
    )
    result = await ingest_batch(conn, [event], region=settings.default_region)
    stored = result.outcomes[0].event
    assert stored is not None
    return stored


async def place_call(services: Services, event: StoredEvent, agent_phone: str) -> StoredEvent:
    """Ask Twilio to ring the agent; record the CallSid, or the failure, on the event.

    Publishes the changed event (``timeline``) and the call (``call``).
    """
    settings = services.settings
    twilio = services.twilio
    assert twilio is not None and event.sender is not None
    try:
        record = await twilio.start_call(
            from_=event.sender,
            to=agent_phone,
            url=webhook_url(settings, WEBHOOK_BRIDGE, event=event.id),
            status_callback=webhook_url(settings, WEBHOOK_STATUS, event=event.id),
            status_callback_events=voice.LEG_EVENTS,
        )
    except TwilioApiError as exc:
        # str(exc) masks numbers (channels.twilio.errors).
        log.warning("click-to-call %s not placed: %s", event.id, exc)
        error: dict[str, Any] = {"message": str(exc)}
        if exc.code is not None:
            error["code"] = exc.code
        if isinstance(exc, TransportError):
            error["unknown"] = True
        async with services.db.write() as conn:
            locked = await calls.lock_event(conn, event.id)
            assert locked is not None
            fresh = await calls.update_event(
                conn, event.id, status="failed", data={**locked.data, "error": error}
            )
        _publish(services, fresh, await read_pop(services.db, fresh))
        return fresh
    log.info("click-to-call %s placed as %s", event.id, record.sid)
    async with services.db.write() as conn:
        locked = await calls.lock_event(conn, event.id)
        assert locked is not None
        if locked.external_id is None:
            await attach_external_id(conn, event.id, Channel.VOICE, record.sid)
            locked = dataclasses.replace(locked, external_id=record.sid)
        await calls.open_call(
            conn,
            call_sid=record.sid,
            event_id=event.id,
            direction=Direction.OUTBOUND.value,
            state=record.status if record.status in voice.STATUSES else "queued",
            caller=event.sender,
            callee=agent_phone,
            at=event.occurred_at,
        )
        applied = await settle(conn, locked)
    _publish(services, applied.event, await read_pop(services.db, applied.event))
    return applied.event


def _publish(services: Services, event: StoredEvent, pop: dict[str, Any]) -> None:
    services.publisher.publish("timeline", event)
    services.publisher.publish("call", pop)
