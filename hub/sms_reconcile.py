"""Reconciliation with Twilio's Messages list: settle unknowns, repair missed callbacks.

Twilio advises a regular reconciliation against its Messages resource
(https://www.twilio.com/docs/messaging/guides/track-outbound-message-status): status
callbacks can be lost, and a crash between Twilio accepting a message and our record of
it leaves an outbox row whose outcome is unknown. Three passes:

1. **Unknown outcomes.** With a MessageSid, fetch it. Without one, list the messages
   sent from our number to theirs since the row was made and find the one with the same
   body; if Twilio has it, it was sent (record it). If it does not, it never left, and
   the row goes back to pending. Nothing is ever sent twice blindly.
2. **Missing callbacks.** Outbound messages still short of a final status some minutes
   after sending are fetched, and their status moves forward.
3. **Missed inbound webhooks.** Messages to our numbers in the last day that we do not
   hold are ingested (a duplicate is a no-op).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import sqlalchemy as sa

from channels.twilio.client import TwilioClient
from channels.twilio.errors import ApiError
from channels.twilio.parse import event_from_message
from channels.twilio.records import MessageRecord
from hub.services import Services
from hub.sms_sender import retry_after_delivery_error
from timeline import outbox
from timeline.events import Channel, Direction, utcnow
from timeline.ingest import advance, attach_external_id
from timeline.outbox import OutboxItem
from timeline.records import StoredEvent
from timeline.schema import events
from timeline.schema import outbox as outbox_table

log = logging.getLogger(__name__)

OPEN_STATUSES = ("accepted", "queued", "sending", "sent")
#: How long a message may wait for its final callback before we ask.
CALLBACK_GRACE = timedelta(minutes=10)
#: How long an unknown outcome waits for Twilio's list before the row may be sent again.
UNKNOWN_GRACE = timedelta(minutes=2)
#: How far back we look for messages whose callbacks never came.
LOOKBACK = timedelta(days=3)


class Reconciler:
    """The three reconciliation passes for one Twilio account."""

    def __init__(self, services: Services, client: TwilioClient) -> None:
        self.services = services
        self.client = client

    async def settle_unknown(self, *, grace: timedelta = UNKNOWN_GRACE) -> int:
        """Pass 1: settle outbox rows whose outcome is unknown; returns how many.

        A row is sent again only if Twilio does not have the message and the row has
        been unknown for longer than ``grace`` (Twilio's list is then complete for it).
        """
        settled = 0
        for item in await outbox.unknown_rows(self.services.db, Channel.SMS.value):
            async with self.services.db.read() as conn:
                row = (
                    await conn.execute(
                        sa.select(
                            outbox_table.c.created_at,
                            outbox_table.c.updated_at,
                            events.c.external_id,
                        )
                        .join(events, events.c.id == outbox_table.c.event_id)
                        .where(outbox_table.c.id == item.id)
                    )
                ).one()
            found: MessageRecord | None
            try:
                known_sid = item.provider_id or row.external_id
                if known_sid:
                    # A status callback (it carries our event id) may have told us the sid.
                    found = await self.client.fetch_message(known_sid)
                else:
                    found = await self._find_at_twilio(item, row.created_at)
            except ApiError as exc:
                log.warning("reconciliation could not ask Twilio: %s", exc)
                continue
            if found is None and utcnow() - row.updated_at < grace:
                continue  # not listed yet; ask again next round
            changed: StoredEvent | None = None
            async with self.services.db.write() as conn:
                if found is None:
                    await outbox.retry_later(
                        conn, item.id, "not at Twilio: it never left; sending again", timedelta(0)
                    )
                    log.info("outbox row %s was never accepted by Twilio: pending again", item.id)
                else:
                    await outbox.mark_sent(conn, item.id, found.sid)
                    await attach_external_id(conn, item.event_id, Channel.SMS, found.sid)
                    changed = await advance(conn, item.event_id, Channel.SMS, found.status)
                    log.info("outbox row %s was accepted by Twilio as %s", item.id, found.sid)
            if changed is not None:
                self.services.publisher.publish("timeline", changed)
            settled += 1
        return settled

    async def _find_at_twilio(self, item: OutboxItem, created: datetime) -> MessageRecord | None:
        """The message Twilio holds for this row, looked up by numbers, time and body.

        No DateSent filter: a message Twilio accepted but has not sent yet has none.
        """
        candidates = await self.client.list_messages(
            from_=item.payload["from"], to=item.payload["to"], limit=200
        )
        earliest = created - timedelta(minutes=5)
        recent = [c for c in candidates if c.date_created is None or c.date_created >= earliest]
        taken = await self._sids_of_other_events([c.sid for c in recent], item.event_id)
        matches = [c for c in recent if c.body == item.payload.get("body") and c.sid not in taken]
        if not matches:
            return None
        return min(matches, key=lambda c: c.date_created or created)

    async def _sids_of_other_events(self, sids: list[str], event_id: str) -> set[str]:
        if not sids:
            return set()
        async with self.services.db.read() as conn:
            rows = await conn.execute(
                sa.select(events.c.external_id).where(
                    events.c.channel == Channel.SMS.value,
                    events.c.external_id.in_(sids),
                    events.c.id != event_id,
                )
            )
            return {r for r in rows.scalars() if r}

    async def repair_statuses(self, *, grace: timedelta = CALLBACK_GRACE) -> int:
        """Pass 2: fetch outbound messages still open after ``grace``; returns updates."""
        now = utcnow()
        async with self.services.db.read() as conn:
            rows = await conn.execute(
                sa.select(events.c.external_id)
                .where(
                    events.c.channel == Channel.SMS.value,
                    events.c.direction == Direction.OUTBOUND.value,
                    events.c.status.in_(OPEN_STATUSES),
                    events.c.external_id.is_not(None),
                    events.c.updated_at < now - grace,
                    events.c.occurred_at > now - LOOKBACK,
                )
                .limit(200)
            )
            sids = [s for s in rows.scalars() if s]
        updates = []
        for sid in sids:
            try:
                record = await self.client.fetch_message(sid)
            except ApiError as exc:
                log.warning("reconciliation could not fetch a message: %s", exc)
                continue
            updates.append(event_from_message(record))
        if not updates:
            return 0
        outcomes = await self.services.writer.submit(updates)
        for update, outcome in zip(updates, outcomes, strict=True):
            if outcome.kind == "updated" and outcome.event is not None:
                code = update.data.get("ErrorCode")
                requeued = await retry_after_delivery_error(
                    self.services,
                    outcome.event,
                    update.external_id or "",
                    code if isinstance(code, int) else None,
                )
                if requeued is not None:
                    self.services.publisher.publish("timeline", requeued)
        return sum(1 for o in outcomes if o.kind == "updated")

    async def repair_inbound(self, *, since: timedelta = timedelta(days=1)) -> int:
        """Pass 3: ingest inbound messages whose webhook never reached us; returns how many."""
        created = 0
        for number in self.services.settings.twilio_numbers:
            try:
                records = await self.client.list_messages(to=number, sent_after=utcnow() - since)
            except ApiError as exc:
                log.warning("reconciliation could not list messages: %s", exc)
                continue
            inbound = [event_from_message(r) for r in records if r.direction == "inbound"]
            if inbound:
                outcomes = await self.services.writer.submit(inbound)
                created += sum(1 for o in outcomes if o.kind == "created")
        if created:
            log.warning("reconciliation stored %d inbound messages whose webhook was lost", created)
        return created

    async def run_once(self) -> None:
        """All three passes."""
        await self.settle_unknown()
        await self.repair_statuses()
        await self.repair_inbound()
