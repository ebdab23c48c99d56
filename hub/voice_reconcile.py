"""Reconciliation of calls whose final status callback never came.

Twilio's status callbacks can be lost (an outage of the hub, a proxy, a dropped
connection), and a call whose ``completed``/``busy``/``no-answer``/... never arrived
would ring on agents' screens forever (``GET /api/v1/calls/active``). So, like the SMS
reconciliation (``hub.sms_reconcile``), a worker job asks Twilio: every call leg still
open in ``timeline.calls`` whose last news is older than ``grace`` is fetched
(https://www.twilio.com/docs/voice/api/call-resource#fetch-a-call-resource, through the
official SDK on ``TWILIO_API_BASE``) and what Twilio says is applied exactly as its
status callback would be (``hub.voice_state.apply_status``): forward-only, so a fetch
can never move a call backwards, and the call's event is settled from all its legs.

A call Twilio does not know (404) is logged and left alone: it is not ours to end.

A click-to-call whose CallSid never reached us (the hub died after Twilio accepted it,
or Twilio's answer was lost, and the call's status callbacks came while the hub was
down) has no leg to fetch. :func:`settle_unplaced` looks such events up in Twilio's
list of calls from our number (https://www.twilio.com/docs/voice/api/call-resource
#read-multiple-call-resources) and applies what it finds, legs included; a click-to-call
Twilio does not have is marked ``failed`` ("not placed"). It is never placed again:
ringing an agent minutes after they clicked would be wrong.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from channels.twilio import voice
from channels.twilio.client import TwilioClient
from channels.twilio.errors import ApiError
from channels.twilio.records import CallRecord
from hub.services import Services
from hub.voice_state import apply_status, read_pop
from timeline import calls as call_rows
from timeline.calls import CallRow
from timeline.events import Channel, Direction, utcnow
from timeline.records import StoredEvent
from timeline.schema import calls, events

log = logging.getLogger(__name__)

#: How long a call leg may go without news before Twilio is asked about it.
CALLBACK_GRACE = timedelta(minutes=5)
#: Most legs fetched in one round (the oldest first); the next round takes the rest.
MAX_PER_ROUND = 200
#: How far back click-to-calls without a CallSid are looked for.
LOOKBACK = timedelta(days=1)
#: Twilio's clock and ours may differ a little: calls created this long before the
#: event still count as its call.
CLOCK_SKEW = timedelta(minutes=1)
NOT_PLACED = "not placed: Twilio has no such call (the hub stopped before it was placed)"


@dataclasses.dataclass(frozen=True, slots=True)
class Round:
    """What one reconciliation round did."""

    checked: int = 0
    changed: int = 0
    unknown: int = 0


async def stale_legs(
    services: Services, *, grace: timedelta, limit: int = MAX_PER_ROUND
) -> list[CallRow]:
    """Call legs not ended whose last update is older than ``grace``, oldest first."""
    cutoff = utcnow() - grace
    async with services.db.read() as conn:
        rows = await conn.execute(
            sa.select(calls)
            .where(calls.c.ended_at.is_(None), calls.c.updated_at < cutoff)
            .order_by(calls.c.updated_at, calls.c.call_sid)
            .limit(limit)
        )
        return [CallRow.from_row(r) for r in rows.mappings()]


async def reconcile_calls(
    services: Services, client: TwilioClient, *, grace: timedelta = CALLBACK_GRACE
) -> Round:
    """One round: fetch every stale open leg from Twilio and apply what it says."""
    checked = changed = unknown = 0
    for leg in await stale_legs(services, grace=grace):
        try:
            record = await client.fetch_call(leg.call_sid)
        except ApiError as exc:
            if exc.http_status == 404:
                unknown += 1
                log.warning("call %s is not known to Twilio; left open", leg.call_sid)
            else:
                log.warning("call %s could not be fetched: %s", leg.call_sid, exc)
            continue
        checked += 1
        if record.status not in voice.STATUSES:
            log.warning("call %s has an unknown status %r", leg.call_sid, record.status)
            continue
        update = _update(record, parent_sid=leg.parent_sid)
        async with services.db.write() as conn:
            applied = await apply_status(conn, update, hint=leg.event_id)
        if applied is not None and applied.changed:
            changed += 1
            log.info("call %s reconciled: %s", leg.call_sid, record.status)
            services.publisher.publish("timeline", applied.event)
            services.publisher.publish("call", await read_pop(services.db, applied.event))
    return Round(checked, changed, unknown)


async def run_once(services: Services, client: TwilioClient) -> None:
    """Both passes: open legs without news, then click-to-calls without a CallSid."""
    await reconcile_calls(services, client)
    await settle_unplaced(services, client)


async def unplaced_calls(services: Services, *, grace: timedelta) -> list[StoredEvent]:
    """Click-to-calls older than ``grace`` with no CallSid whose outcome is not known:
    still ``queued``, or ``failed`` because Twilio's answer never came."""
    now = utcnow()
    async with services.db.read() as conn:
        rows = await conn.execute(
            sa.select(events)
            .where(
                events.c.channel == Channel.VOICE.value,
                events.c.direction == Direction.OUTBOUND.value,
                events.c.external_id.is_(None),
                events.c.status.in_(("queued", "failed")),
                events.c.occurred_at > now - LOOKBACK,
                events.c.updated_at < now - grace,
            )
            .order_by(events.c.occurred_at, events.c.id)
            .limit(MAX_PER_ROUND)
        )
        found = [StoredEvent.from_row(r) for r in rows.mappings()]
    return [e for e in found if e.data.get("click_to_call") and _outcome_unknown(e)]


def _outcome_unknown(event: StoredEvent) -> bool:
    if event.status == "queued":
        return True
    error = event.data.get("error")
    return isinstance(error, dict) and error.get("unknown") is True


async def settle_unplaced(
    services: Services, client: TwilioClient, *, grace: timedelta = CALLBACK_GRACE
) -> Round:
    """Settle click-to-calls whose CallSid never reached us from Twilio's list of calls."""
    checked = changed = 0
    settled: StoredEvent | None
    for event in await unplaced_calls(services, grace=grace):
        assert event.sender is not None
        try:
            candidates = await client.list_calls(from_=event.sender, limit=200)
        except ApiError as exc:
            log.warning("calls could not be listed at Twilio: %s", exc)
            break
        checked += 1
        found = await _match(services, event, candidates)
        legs: list[CallRecord] = []
        if found is not None:
            try:
                legs = await client.list_calls(parent_sid=found.sid, limit=50)
            except ApiError as exc:
                log.warning("legs of call %s could not be listed: %s", found.sid, exc)
                continue
        async with services.db.write() as conn:
            locked = await call_rows.lock_event(conn, event.id)
            if locked is None or locked.external_id is not None or not _outcome_unknown(locked):
                continue  # a callback settled it meanwhile
            if found is None:
                settled = await _not_placed(conn, locked)
            else:
                settled = await _apply_found(conn, locked, found, legs)
        if settled is not None:
            changed += 1
            log.info("click-to-call %s reconciled: %s", event.id, settled.status)
            services.publisher.publish("timeline", settled)
            services.publisher.publish("call", await read_pop(services.db, settled))
    return Round(checked, changed, 0)


async def _match(
    services: Services, event: StoredEvent, candidates: list[CallRecord]
) -> CallRecord | None:
    """The earliest call Twilio created for this event: ours, placed by the API, made
    after the event, and not already another event's."""
    earliest = event.occurred_at - CLOCK_SKEW
    mine = [
        c
        for c in candidates
        if c.direction == "outbound-api" and _created(c, event.occurred_at) >= earliest
    ]
    if not mine:
        return None
    async with services.db.read() as conn:
        taken = set(
            (
                await conn.execute(
                    sa.select(calls.c.call_sid).where(calls.c.call_sid.in_([c.sid for c in mine]))
                )
            ).scalars()
        )
    free = [c for c in mine if c.sid not in taken]
    return min(free, key=lambda c: _created(c, event.occurred_at), default=None)


def _created(call: CallRecord, default: datetime) -> datetime:
    return call.date_created or default


async def _not_placed(conn: AsyncConnection, event: StoredEvent) -> StoredEvent:
    error = {**(event.data.get("error") or {}), "message": NOT_PLACED, "unknown": False}
    return await call_rows.update_event(
        conn, event.id, status="failed", data={**event.data, "error": error}
    )


async def _apply_found(
    conn: AsyncConnection, event: StoredEvent, found: CallRecord, legs: list[CallRecord]
) -> StoredEvent | None:
    updates = [_update(found, parent_sid=None)]
    updates += [_update(leg, parent_sid=found.sid) for leg in reversed(legs)]
    applied = None
    for update in updates:
        applied = await apply_status(conn, update, hint=event.id) or applied
    if applied is None:
        return None
    data = dict(applied.event.data)
    if "error" in data:
        data.pop("error")
        return await call_rows.update_event(conn, event.id, data=data)
    return applied.event


def _update(record: CallRecord, *, parent_sid: str | None) -> voice.CallUpdate:
    return voice.CallUpdate(
        call_sid=record.sid,
        status=record.status,
        parent_sid=parent_sid,
        direction=record.direction,
        from_=record.from_,
        to=record.to,
        duration=record.duration if record.status in voice.TERMINAL else None,
    )
