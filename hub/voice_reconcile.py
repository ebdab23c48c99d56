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
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta

import sqlalchemy as sa

from channels.twilio import voice
from channels.twilio.client import TwilioClient
from channels.twilio.errors import ApiError
from hub.services import Services
from hub.voice_state import apply_status, read_pop
from timeline.calls import CallRow
from timeline.events import utcnow
from timeline.schema import calls

log = logging.getLogger(__name__)

#: How long a call leg may go without news before Twilio is asked about it.
CALLBACK_GRACE = timedelta(minutes=5)
#: Most legs fetched in one round (the oldest first); the next round takes the rest.
MAX_PER_ROUND = 200


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
        update = voice.CallUpdate(
            call_sid=leg.call_sid,
            status=record.status,
            parent_sid=leg.parent_sid,
            direction=record.direction,
            from_=record.from_,
            to=record.to,
            duration=record.duration if record.status in voice.TERMINAL else None,
        )
        async with services.db.write() as conn:
            applied = await apply_status(conn, update, hint=leg.event_id)
        if applied is not None and applied.changed:
            changed += 1
            log.info("call %s reconciled: %s", leg.call_sid, record.status)
            services.publisher.publish("timeline", applied.event)
            services.publisher.publish("call", await read_pop(services.db, applied.event))
    return Round(checked, changed, unknown)
