"""The email sender worker: drains the email outbox over SMTP (aiosmtplib).

The message is composed at send time from the event (subject, text, HTML), the stored
documents it attaches and the threading headers in the outbox row, with the Message-ID
made when it was queued. Outcomes (RFC 5321 4.2.1 reply codes):

- accepted: ``sent`` (the server's DATA answer is kept);
- 4xx or no connection: retried with growing delays, up to :data:`MAX_ATTEMPTS`;
- 5xx: ``failed`` with the server's code and reason on the event;
- connection lost while the server answered DATA: unknown. Resending reuses the same
  Message-ID, which receivers use to drop a duplicate, so the row is retried.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from channels.email.compose import ReplyContext, compose_message
from channels.email.errors import (
    ComposeError,
    OutcomeUnknownError,
    PermanentSendError,
    TransientSendError,
)
from channels.email.smtp import SmtpConfig, send_message
from hub.services import Services
from timeline import outbox
from timeline.events import Attachment, Channel
from timeline.ingest import advance
from timeline.outbox import OutboxItem
from timeline.records import StoredEvent
from timeline.schema import documents, events

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
MAX_DELAY = timedelta(hours=1)


class EmailSender:
    """Claims email outbox rows and sends them, one SMTP session each."""

    def __init__(
        self,
        services: Services,
        config: SmtpConfig | None = None,
        *,
        batch: int = 20,
        worker_id: str | None = None,
    ) -> None:
        self.services = services
        self.config = config or SmtpConfig.from_settings(services.settings)
        self.batch = batch
        self.worker_id = worker_id or f"{socket.gethostname()}:{id(self):x}"

    async def _compose(self, item: OutboxItem) -> Any:
        payload = item.payload
        async with self.services.db.read() as conn:
            row = (
                (await conn.execute(sa.select(events).where(events.c.id == item.event_id)))
                .mappings()
                .one()
            )
            doc_rows = (
                await conn.execute(
                    sa.select(documents).where(documents.c.id.in_(payload.get("attachments", [])))
                )
            ).mappings()
            files = []
            for doc in doc_rows:
                path = self.services.files.path(doc["sha256"])
                files.append(
                    Attachment(doc["filename"], doc["content_type"], content=path.read_bytes())
                )
        reply = None
        if payload.get("in_reply_to"):
            refs = [r for r in payload.get("references", []) if r != payload["in_reply_to"]]
            reply = ReplyContext(message_id=payload["in_reply_to"], references=tuple(refs))
        return compose_message(
            from_addr=payload["from"],
            to=[payload["to"]],
            subject=row["subject"] or "",
            text=row["text"],
            html=row["html"],
            attachments=files,
            reply=reply,
            message_id=payload["message_id"],
        )

    async def send_one(self, item: OutboxItem) -> None:
        """Send one claimed row and record its outcome."""
        status: str | None = None
        data: dict[str, Any] = {}
        try:
            message = await self._compose(item)
            result = await send_message(message, self.config)
        except ComposeError as exc:
            finish, status, data = "failed", "failed", {"error": str(exc)}
        except PermanentSendError as exc:
            finish, status = "failed", "failed"
            data = {"smtp_code": exc.code, "smtp_reason": exc.reason}
        except (TransientSendError, OutcomeUnknownError) as exc:
            finish = "retry" if item.attempts < MAX_ATTEMPTS else "failed"
            if finish == "failed":
                status = "failed"
                data = {"smtp_code": getattr(exc, "code", None), "error": "gave up after retries"}
            log.info("email %s: transient failure, attempt %d", item.id, item.attempts)
            error = str(exc)
        else:
            finish, status = "sent", "sent"
            data = {"smtp_response": result.response[:200]}
        changed: StoredEvent | None = None
        async with self.services.db.write() as conn:
            if finish == "sent":
                await outbox.mark_sent(conn, item.id, item.payload["message_id"])
            elif finish == "retry":
                delay = min(timedelta(seconds=30 * 2 ** (item.attempts - 1)), MAX_DELAY)
                await outbox.retry_later(conn, item.id, error, delay)
            else:
                await outbox.mark_failed(conn, item.id, str(data))
            if status is not None:
                changed = await advance(conn, item.event_id, Channel.EMAIL, status, data)
        if changed is not None:
            self.services.publisher.publish("timeline", changed)

    async def run_once(self) -> int:
        """Claim and send one batch; returns how many rows it handled."""
        items = await outbox.claim(
            self.services.db, Channel.EMAIL.value, self.worker_id, limit=self.batch
        )
        await asyncio.gather(*(self.send_one(i) for i in items))
        return len(items)

    async def run_forever(self, idle: float = 1.0) -> None:
        """Send until cancelled."""
        while True:
            try:
                handled = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("email sender round failed")
                handled = 0
            if not handled:
                await asyncio.sleep(idle)
