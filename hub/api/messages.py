"""Sending: ``POST /api/v1/messages`` queues an outbound message through the outbox."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import Response

from hub import schemas
from hub.errors import ApiError
from hub.routing import Ctx, Endpoint
from hub.sms_outbound import Refused, queue_sms
from timeline.idempotency import Answer


async def send_message(ctx: Ctx) -> Response:
    """Queue a message: the event (status ``queued``) and its outbox row, atomically.

    The answer is 202 with the queued event; its status moves forward (sent, delivered
    or failed with the reason) on the timeline and the live stream. A customer who opted
    out is 409 ``opted_out`` with the date; a channel that is not configured is 422.
    """
    body = await ctx.body(schemas.MessageIn)
    settings = ctx.services.settings
    if body.channel == "sms" and not settings.channel_enabled("twilio"):
        raise ApiError(
            422, "invalid_field", "channel: the sms channel is not configured", field="channel"
        )
    if body.channel == "email":
        raise ApiError(
            422, "invalid_field", "channel: email sending is not available yet", field="channel"
        )
    services = ctx.services

    async def op(conn: AsyncConnection) -> Answer:
        try:
            event = await queue_sms(
                conn,
                settings,
                customer_id=body.customer_id,
                text=body.text,
                purpose=body.purpose,
                author=ctx.agent.id,
            )
        except Refused as exc:
            status = 409 if exc.code == "opted_out" else 422
            field = {} if status == 409 else {"field": "customer_id"}
            raise ApiError(status, exc.code, str(exc), **field) from None
        ctx.after_commit.append(lambda: services.publisher.publish("timeline", event))
        return Answer(202, event.to_json())

    return await ctx.write(op)


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
            409: ("the customer opted out, or was merged into another", schemas.Error),
            422: ("an invalid field, no phone, or a channel that is not configured", schemas.Error),
        },
        body=schemas.MessageIn,
        idempotent=True,
        tag="messages",
    ),
]
