"""Twilio's SMS webhooks: inbound messages and message status callbacks.

Every request is checked first: a body over :data:`MAX_BODY` is 413, a missing or wrong
X-Twilio-Signature (computed over ``HUB_PUBLIC_URL`` + path + query, never the internal
URL, https://www.twilio.com/docs/usage/webhooks/webhooks-security) is 403, and nothing is
stored. A malformed payload is 400 with the field named. Events go through the group
writer, and the answer is sent only once they are committed: a 2xx tells Twilio it need
not retry, so it must mean "stored".

An inbound STOP (or another opt-out keyword) stores the message and a consent event in
the same transaction; the opt-out covers every one of our numbers. HELP/INFO is answered
with ``TWILIO_HELP_TEXT``. A status callback for a message we do not know is logged and
answered 200 (Twilio does not retry callbacks; there is nothing to fix on its side).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar
from xml.sax.saxutils import escape

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channels.twilio import parse, signature
from channels.twilio.errors import PayloadError
from channels.twilio.forms import decode_form
from hub.errors import error_body
from hub.services import Services
from hub.sms_sender import retry_after_delivery_error
from timeline import consent, ingest
from timeline.events import Channel, Event

log = logging.getLogger(__name__)

P = TypeVar("P")

#: Twilio's forms are a few kB (ten media URLs at most); anything near this is not Twilio.
MAX_BODY = 64 * 1024

_KEYWORD_STATE = {"opt_out": consent.OPTED_OUT, "opt_in": consent.OPTED_IN}


_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
#: The answer to nearly every inbound SMS, encoded once.
_EMPTY_TWIML = f"{_XML_DECLARATION}<Response/>".encode()


def twiml(*messages: str) -> Response:
    """A TwiML answer, with a ``<Message>`` for each reply text."""
    if not messages:
        return Response(_EMPTY_TWIML, media_type="text/xml")
    inner = "".join(f"<Message>{escape(m)}</Message>" for m in messages)
    return Response(f"{_XML_DECLARATION}<Response>{inner}</Response>", media_type="text/xml")


def json_error(status: int, code: str, message: str) -> Response:
    return JSONResponse(error_body(code, message), status)


class _TooLarge(Exception):
    pass


async def _read_limited(request: Request, declared: str) -> bytes:
    """The body, at most :data:`MAX_BODY` bytes (``declared``: its Content-Length).

    Read from ASGI ``receive`` as ``Request.stream()`` does (a disconnect raises
    ``ClientDisconnect``), without its async generator: the body of a webhook is one
    message.
    """
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise _TooLarge
    body = b""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        body = body + chunk if body else chunk
        if len(body) > MAX_BODY:
            raise _TooLarge
        if not message.get("more_body", False):
            return body


_WANTED = frozenset((b"content-length", b"x-twilio-signature", b"content-type"))


def _webhook_headers(request: Request) -> tuple[str, str | None, str]:
    """Content-Length, X-Twilio-Signature and Content-Type, in one pass over the headers.

    The first value of each, as ``request.headers.get`` gives (which scans them once per
    name).
    """
    found: dict[bytes, bytes] = {}
    for name, value in request.scope["headers"]:
        name = name.lower()
        if name in _WANTED and name not in found:
            found[name] = value
    signed = found.get(b"x-twilio-signature")
    return (
        found.get(b"content-length", b"").decode("latin-1"),
        None if signed is None else signed.decode("latin-1"),
        found.get(b"content-type", b"").decode("latin-1"),
    )


async def verified_form(
    request: Request, services: Services
) -> tuple[list[tuple[str, str]] | None, Response | None]:
    """The signed form of a Twilio webhook, or the error answer."""
    token = services.settings.twilio_auth_token
    if not token:
        return None, json_error(404, "not_found", "the twilio channel is off")
    declared, header, content_type = _webhook_headers(request)
    try:
        body = await _read_limited(request, declared)
    except _TooLarge:
        return None, json_error(413, "too_large", f"webhook bodies are at most {MAX_BODY} bytes")
    # The matched route's path and the raw query, from the scope: what request.url
    # would give here, without building a URL per webhook (~4 us, timeit).
    url = signature.public_url_for(
        services.settings.public_url,
        request.scope["path"],
        request.scope.get("query_string", b"").decode(),
    )
    if content_type.startswith("application/json"):
        ok = signature.verify(token, url, None, body, header)
        form: list[tuple[str, str]] = []
    else:
        try:
            form = decode_form(body)
        except (PayloadError, UnicodeDecodeError, ValueError):
            form = []
            ok = False
        else:
            ok = signature.verify(token, url, form, None, header)
    if not ok:
        log.warning("twilio webhook %s refused: bad or missing signature", request.url.path)
        return None, json_error(403, "forbidden", "bad or missing X-Twilio-Signature")
    if content_type.startswith("application/json"):
        return None, json_error(400, "bad_request", "expected a form body for this webhook")
    return form, None


async def signed_payload(
    request: Request, services: Services, parser: Callable[[list[tuple[str, str]]], P]
) -> P | Response:
    """The parsed payload of a signed Twilio webhook, or the error answer (403/413/400...)."""
    form, error = await verified_form(request, services)
    if error is not None:
        return error
    assert form is not None
    try:
        return parser(form)
    except PayloadError as exc:
        return json_error(400, "bad_payload", str(exc))


async def inbound_sms(request: Request) -> Response:
    """An incoming SMS or MMS: store it (and any consent change), answer TwiML."""
    services: Services = request.app.state.services
    parsed = await signed_payload(request, services, parse.parse_inbound_sms)
    if isinstance(parsed, Response):
        return parsed
    (message,) = parsed
    submission: list[Event] = [message]
    keyword = message.data.get("consent")
    state = _KEYWORD_STATE.get(str(keyword))
    if state is not None:
        submission.append(
            consent.change(
                Channel.SMS,
                state,
                occurred_at=message.occurred_at,
                external_id=f"{message.external_id}/consent",
                cause=f"keyword {(message.text or '').strip().upper()}",
                sender=message.sender,
            )
        )
    outcomes = await services.writer.submit(submission)
    if outcomes[0].kind == "rejected":
        log.warning("inbound sms %s rejected: %s", message.external_id, outcomes[0].reason)
        return json_error(400, "bad_payload", outcomes[0].reason or "unusable message")
    log.info("inbound sms %s: %s", message.external_id, outcomes[0].kind)
    if keyword == "help" and outcomes[0].kind == "created":
        return twiml(services.settings.twilio_help_text)
    return twiml()


async def sms_status(request: Request) -> Response:
    """A message status callback: move the message's status forward."""
    services: Services = request.app.state.services
    parsed = await signed_payload(request, services, parse.parse_status_callback)
    if isinstance(parsed, Response):
        return parsed
    (update,) = parsed
    (outcome,) = await services.writer.submit([update])
    event_id = request.query_params.get("event")
    if outcome.kind == "unknown" and event_id and update.external_id:
        # The callback beat the sender worker's record of the MessageSid: attach it to
        # the event named in the callback URL (signed), then apply the status. Apply it
        # again even when the attach found the event holding an id already: the worker
        # may have recorded this very MessageSid since the lookup above, and dropping
        # the status then would lose it (an undelivered one would never be retried).
        # Only this rare case pays for the extra transactions.
        async with services.db.write() as conn:
            await ingest.attach_external_id(conn, event_id, Channel.SMS, update.external_id)
        (outcome,) = await services.writer.submit([update])
    if outcome.kind == "unknown":
        log.info("status callback for unknown message %s ignored", update.external_id)
    elif outcome.kind == "updated" and outcome.event is not None:
        code = update.data.get("ErrorCode")
        requeued = await retry_after_delivery_error(
            services,
            outcome.event,
            update.external_id or "",
            code if isinstance(code, int) else None,
        )
        if requeued is not None:
            services.publisher.publish("timeline", requeued)
        if code == 21610:
            await services.writer.submit(
                [
                    consent.change(
                        Channel.SMS,
                        consent.OPTED_OUT,
                        occurred_at=update.occurred_at,
                        external_id=f"{update.external_id}/consent",
                        cause="Twilio error 21610 (the recipient has opted out)",
                        customer_id=outcome.event.customer_id,
                    )
                ]
            )
    return Response(status_code=200)


ROUTES = [
    Route("/webhooks/twilio/sms", inbound_sms, methods=["POST"]),
    Route("/webhooks/twilio/sms/status", sms_status, methods=["POST"]),
]
