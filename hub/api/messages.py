"""Sending: ``POST /api/v1/messages`` queues an outbound message through the outbox."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import Response

from hub import schemas
from hub.email_outbound import queue_email
from hub.errors import ApiError
from hub.routing import Ctx, Endpoint
from hub.sms_outbound import Refused, queue_sms
from timeline.idempotency import Answer


async def send_message(ctx: Ctx) -> Response:
    """Queue a message: the event (status ``queued``) and its outbox row, atomically.

    The answer is 202 with the queued event; its status moves forward (sent, delivered,
    bounced or failed with the reason) on the timeline and the live stream. A customer
    who opted out is 409 ``opted_out`` with the date, an address that hard-bounced is
    409 ``bounced``; a channel that is not configured is 422.
    """
    body = await ctx.body(schemas.MessageIn)
    settings = ctx.services.settings
    needs = {"sms": "twilio", "email": "smtp"}[body.channel]
    if not settings.channel_enabled(needs):
        raise ApiError(
            422,
            "invalid_field",
            f"channel: the {body.channel} channel is not configured",
            field="channel",
        )
    if body.channel == "sms" and (body.subject or body.html or body.attachments or body.reply_to):
        raise ApiError(
            422,
            "invalid_field",
            "subject, html, attachments and reply_to are for email",
            field="channel",
        )
    if body.channel == "sms" and len(body.text) > 1600:
        raise ApiError(422, "invalid_field", "text: at most 1600 characters by SMS", field="text")
    services = ctx.services

    async def op(conn: AsyncConnection) -> Answer:
        await ctx.require_visible(conn, body.customer_id)
        try:
            if body.channel == "sms":
                event = await queue_sms(
                    conn,
                    settings,
                    customer_id=body.customer_id,
                    text=body.text,
                    purpose=body.purpose,
                    author=ctx.agent.id,
                )
            else:
                event = await queue_email(
                    conn,
                    settings,
                    customer_id=body.customer_id,
                    text=body.text,
                    subject=body.subject,
                    html=body.html,
                    reply_to=body.reply_to,
                    attachments=body.attachments,
                    purpose=body.purpose,
                    author=ctx.agent.id,
                )
        except Refused as exc:
            status = 409 if exc.code in ("opted_out", "bounced") else 422
            field = {} if status == 409 else {"field": _FIELDS.get(exc.code, "customer_id")}
            raise ApiError(status, exc.code, str(exc), **field) from None
        ctx.after_commit.append(lambda: services.publisher.publish("timeline", event))
        return Answer(202, event.to_json())

    return await ctx.write(op)


_FIELDS = {"bad_reply_to": "reply_to", "no_subject": "subject", "bad_attachment": "attachments"}

ENDPOINTS = [
    Endpoint(
        "POST",
        "/api/v1/messages",
        send_message,
        "Send a message to a customer (queued through the outbox)",
        "agent",
        {
            202: ("the queued event", schemas.EventOut),
            400: ("malformed JSON", schemas.Error),
            401: ("no valid token", schemas.Error),
            404: ("no such customer", schemas.Error),
            409: (
                "the customer opted out, the address bounced, or the customer was merged",
                schemas.Error,
            ),
            422: ("an invalid field, no phone, or a channel that is not configured", schemas.Error),
        },
        body=schemas.MessageIn,
        idempotent=True,
        tag="messages",
    ),
]
