"""The SMS sender worker: drains the outbox to Twilio.

Each round claims a batch of due rows, checks consent once more (it may have changed
while the message waited), sends them concurrently, spacing each sending number to
``TWILIO_SMS_RATE``, and records the outcomes in transactions of ``record_every`` while
the rest of the round is still being sent (a round ends once all are recorded). What each Twilio
error means (RELIABILITY.md, ``channels.twilio.errors.classify``):

- 21610: the recipient opted out: failed, never retried, and the customer is opted out;
- 30004-30007 and other permanent errors: failed with the code and Twilio's message;
- 30003/30008: one delayed retry;
- 429, 30001, 21611: back off, and slow that sending number down;
- no answer or a 5xx: the outcome is unknown (Twilio may have accepted it). The row is
  marked ``unknown`` and reconciliation looks the message up; it is never resent blindly.

https://www.twilio.com/docs/api/errors
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from channels.twilio.client import TwilioClient
from channels.twilio.errors import ApiError, Outcome, classify
from hub.ratelimit import Spacer
from hub.services import Services
from timeline import consent, outbox
from timeline.events import Channel, utcnow
from timeline.ingest import advance, ingest_batch, record_sends, restart_delivery
from timeline.outbox import OutboxItem
from timeline.records import StoredEvent
from timeline.schema import consents, events

log = logging.getLogger(__name__)

RETRY_ONCE_DELAY = timedelta(minutes=2)
MAX_BACKOFF = timedelta(minutes=15)


@dataclasses.dataclass
class _Result:
    item: OutboxItem
    customer_id: str
    kind: str  # sent, skipped, failed, retry, unknown
    sid: str | None = None
    status: str | None = None
    error: str | None = None
    code: int | None = None
    delay: timedelta | None = None
    opted_out: bool = False


#: How often a delivery failure of each class is tried again (attempts in all).
DELIVERY_RETRIES = {Outcome.RETRY_ONCE: 2, Outcome.BACK_OFF: 5}


async def retry_after_delivery_error(
    services: Services, event: StoredEvent, sid: str, code: int | None
) -> StoredEvent | None:
    """Schedule another attempt of a message the carrier failed retryably (30003, 30001...).

    These codes arrive in ``undelivered``/``failed`` callbacks, after Twilio accepted the
    message, so the send worker never saw them. A callback may also come before the
    worker recorded the send (the row still claimed or unknown): the signed callback URL
    names the event and the MessageSid is now the event's, so the row is re-queued all
    the same and the worker's later record leaves it alone. Returns the re-queued event,
    or None when the failure is final (permanent, or out of attempts).
    """
    outcome = classify(code, None)
    limit = DELIVERY_RETRIES.get(outcome)
    if limit is None or event.status not in ("undelivered", "failed"):
        return None
    async with services.db.write() as conn:
        found = await outbox.accepted_row_for(conn, event.id, sid)
        if found is None or found[1] >= limit:
            return None
        row_id, attempts = found
        delay = (
            RETRY_ONCE_DELAY
            if outcome is Outcome.RETRY_ONCE
            else min(timedelta(seconds=2**attempts), MAX_BACKOFF)
        )
        error = f"delivery failed with {code}; trying again"
        if not await outbox.reopen(conn, row_id, sid, error, delay):
            return None  # settled meanwhile by someone else (PostgreSQL re-checks the row)
        requeued = await restart_delivery(
            conn, event.id, {"external_id": sid, "status": event.status, "error_code": code}
        )
    log.info("message %s failed with %s: attempt %d scheduled", sid, code, attempts + 1)
    return requeued


class SmsSender:
    """Claims SMS outbox rows and sends them with one Twilio client."""

    def __init__(
        self,
        services: Services,
        client: TwilioClient,
        *,
        batch: int = 200,
        concurrency: int = 32,
        record_every: int = 50,
        worker_id: str | None = None,
    ) -> None:
        self.services = services
        self.client = client
        self.batch = batch
        self.concurrency = concurrency
        self.record_every = record_every
        self.worker_id = worker_id or f"{socket.gethostname()}:{id(self):x}"
        self.spacer = Spacer(services.settings.twilio_sms_rate)

    def status_callback(self, event_id: str) -> str:
        """Where Twilio reports this message's status (carrying our event id)."""
        return f"{self.services.settings.public_url}/webhooks/twilio/sms/status?event={event_id}"

    async def run_once(self) -> int:
        """Claim and send one batch; returns how many rows it handled."""
        items = await outbox.claim(
            self.services.db, Channel.SMS.value, self.worker_id, limit=self.batch
        )
        if not items:
            return 0
        async with self.services.db.read() as conn:
            rows = await conn.execute(
                sa.select(events.c.id, events.c.customer_id).where(
                    events.c.id.in_([i.event_id for i in items])
                )
            )
            owners = {r.id: r.customer_id for r in rows}
            # One query for the batch: who objects to which purpose.
            refusals = await conn.execute(
                sa.select(consents.c.customer_id, consents.c.purpose).where(
                    consents.c.customer_id.in_(set(owners.values())),
                    consents.c.channel == Channel.SMS.value,
                    consents.c.state == consent.OPTED_OUT,
                )
            )
            refused = {(r.customer_id, r.purpose) for r in refusals}
        objections = {
            item.id: (
                owners[item.event_id],
                item.payload.get("purpose", consent.TRANSACTIONAL),
            )
            in refused
            for item in items
        }
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: OutboxItem) -> _Result:
            customer_id = owners[item.event_id]
            if objections[item.id]:
                return _Result(item, customer_id, "skipped", error="opted out", code=None)
            # The slot first: a backlog on one number must not hold send places
            # another number could use.
            await self.spacer.acquire(item.payload["from"])
            async with gate:
                return await self._send(item, customer_id)

        # Outcomes are recorded in chunks while the rest of the batch is still being sent,
        # one transaction at a time, so the database work overlaps the network wait.
        done: list[_Result] = []
        recording: asyncio.Task[None] | None = None

        async def sent(item: OutboxItem) -> None:
            nonlocal recording
            done.append(await one(item))
            if len(done) >= self.record_every and (recording is None or recording.done()):
                if recording is not None:
                    await recording  # surfaces a failed chunk
                chunk = done[:]
                done.clear()
                recording = asyncio.create_task(self._record(chunk))

        try:
            await asyncio.gather(*(sent(i) for i in items))
        finally:
            if recording is not None:
                await recording
            if done:
                await self._record(done)
        return len(items)

    async def _send(self, item: OutboxItem, customer_id: str) -> _Result:
        payload = item.payload
        try:
            record = await self.client.send_sms(
                from_=payload["from"],
                to=payload["to"],
                body=payload.get("body"),
                media_urls=payload.get("media_urls", ()),
                status_callback=self.status_callback(item.event_id),
            )
        except ApiError as exc:
            return self._failure(item, customer_id, exc)
        return _Result(item, customer_id, "sent", sid=record.sid, status=record.status)

    def _failure(self, item: OutboxItem, customer_id: str, exc: ApiError) -> _Result:
        outcome = exc.outcome

        def result(kind: str, **more: Any) -> _Result:
            return _Result(item, customer_id, kind, error=str(exc), code=exc.code, **more)

        if outcome is Outcome.OPTED_OUT:
            return result("failed", opted_out=True)
        if outcome is Outcome.PERMANENT:
            return result("failed")
        if outcome is Outcome.RETRY_ONCE:
            if item.attempts < 2:
                return result("retry", delay=RETRY_ONCE_DELAY)
            return result("failed")
        if outcome is Outcome.BACK_OFF:
            delay = min(timedelta(seconds=2 ** min(item.attempts, 10)), MAX_BACKOFF)
            self.spacer.slow_down(item.payload["from"], delay.total_seconds())
            return result("retry", delay=delay)
        return result("unknown")

    async def _record(self, results: list[_Result]) -> None:
        changed: list[StoredEvent] = []
        sent = [r for r in results if r.kind == "sent" and r.sid]
        async with self.services.db.write() as conn:
            # The common case in a few statements for the whole round.
            recorded = await outbox.mark_sent_many(
                conn, [(r.item.id, r.sid or "", r.item.attempts) for r in sent]
            )
            # A row not recorded was re-queued by a status callback that came first (a
            # retryable failure): its event already holds that attempt as a previous one.
            changed += await record_sends(
                conn,
                Channel.SMS,
                [
                    (r.item.event_id, r.sid or "", r.status or "queued")
                    for r in sent
                    if r.item.id in recorded
                ],
            )
            for r in results:
                event_id = r.item.event_id
                moved: StoredEvent | None = None
                if r.kind == "sent":
                    continue
                if r.kind == "skipped":
                    await outbox.mark_skipped(conn, r.item.id, "the customer opted out")
                    moved = await advance(
                        conn, event_id, Channel.SMS, "skipped", {"skip_reason": "opted out"}
                    )
                elif r.kind == "failed":
                    await outbox.mark_failed(conn, r.item.id, r.error or "failed")
                    data: dict[str, Any] = {"error_code": r.code, "error_message": r.error}
                    moved = await advance(conn, event_id, Channel.SMS, "failed", data)
                    if r.opted_out:
                        result = await ingest_batch(
                            conn,
                            [
                                consent.change(
                                    Channel.SMS,
                                    consent.OPTED_OUT,
                                    occurred_at=utcnow(),
                                    external_id=f"{event_id}/consent-21610",
                                    cause="Twilio error 21610 (the recipient has opted out)",
                                    customer_id=r.customer_id,
                                )
                            ],
                            region=self.services.settings.default_region,
                        )
                        changed += result.changed
                elif r.kind == "retry" and r.delay is not None:
                    await outbox.retry_later(conn, r.item.id, r.error or "retry", r.delay)
                else:
                    await outbox.mark_unknown(
                        conn, r.item.id, r.error or "outcome unknown", r.item.attempts
                    )
                if moved is not None:
                    changed.append(moved)
        for stored in changed:
            self.services.publisher.publish("timeline", stored)
        failed = sum(1 for r in results if r.kind in ("failed", "unknown"))
        log.info("sms sender: %d handled, %d failed or unknown", len(results), failed)

    async def run_forever(self, idle: float = 0.5) -> None:
        """Send until cancelled, polling the outbox every ``idle`` seconds when empty."""
        while True:
            try:
                handled = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sms sender round failed")
                handled = 0
            if not handled:
                await asyncio.sleep(idle)
