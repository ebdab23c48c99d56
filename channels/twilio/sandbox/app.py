"""The built-in Twilio sandbox: a fake Twilio that the real SDK talks to, in memory.

It speaks the REST paths and JSON shapes of the Message and Call resources
(https://www.twilio.com/docs/messaging/api/message-resource,
https://www.twilio.com/docs/voice/api/call-resource) with HTTP Basic auth, answers errors
as Twilio does (``{"code": 21610, "message": ..., "more_info": ..., "status": 400}``),
and POSTs signed status callbacks after a create, as Twilio would
(https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks):
no callback for the initial ``queued``; then ``sent`` and ``delivered`` (or a failure).
Point ``TWILIO_API_BASE`` at it.

Test numbers (the last four digits of ``To``):

====== =================================================
0005   sent, then undelivered with ErrorCode 30005 (unknown handset)
0003   sent, then undelivered with ErrorCode 30003 (unreachable: retry once)
0007   sent, then undelivered with ErrorCode 30007 (filtered by the carrier)
0001   failed with ErrorCode 30001 (queue overflow: back off)
other  sent, then delivered
====== =================================================

A number opted out (:meth:`Sandbox.opt_out`, ``POST /sandbox/opt-outs``, or a customer
texting STOP through the sandbox, as Twilio blocks it) makes a create answer 400 with
code 21610. :meth:`Sandbox.fail_next_create` makes the next create fail (429, 500, ...),
optionally after the message was accepted, for the outbox's unknown-outcome path.

Customers' phones: :meth:`Sandbox.text_hub` (``POST /sandbox/sms`` with
``{"from", "to", "body"}``) POSTs a signed inbound-SMS form, with Twilio's field set, to
the hub's ``/webhooks/twilio/sms`` and delivers ``<Message>`` replies of its TwiML;
``GET /sandbox/phones/{number}/messages`` lists what a phone sent and received.

Calls: create and fetch; the call goes initiated, ringing, in-progress, completed, with
signed callbacks for the ``StatusCallbackEvent`` values asked for (default
``completed``). The sandbox never fetches the call's TwiML ``Url``.

:func:`run_sandbox` serves it on a loopback port: ``async with run_sandbox(sb) as url``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import email.utils
import hmac
import logging
import mimetypes
import re
import secrets
import socket
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Collection, Coroutine, Iterator, Sequence
from datetime import date, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import phonenumbers
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from channels.twilio.errors import PayloadError
from channels.twilio.forms import encode_form, form_items
from channels.twilio.parse import consent_keyword
from channels.twilio.signature import SIGNATURE_HEADER, sign
from timeline.events import utcnow

__all__ = ["CallbackRecord", "Sandbox", "TextResult", "create_app", "run_sandbox", "serve"]

_log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
_PREFIX = f"/{API_VERSION}/Accounts/{{account_sid}}"
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")

#: Last four digits of To -> the failure the carrier reports.
_TEST_NUMBERS: dict[str, tuple[str, int]] = {
    "0005": ("undelivered", 30005),
    "0003": ("undelivered", 30003),
    "0007": ("undelivered", 30007),
    "0001": ("failed", 30001),
}
_ERROR_TEXT = {
    30001: "Queue overflow",
    30003: "Unreachable destination handset",
    30005: "Unknown destination handset",
    30007: "Message filtered",
}
#: Twilio's default replies to its opt-out, opt-in and help keywords.
_AUTO_REPLY = {
    "opt_out": "You have successfully been unsubscribed. You will not receive any more "
    "messages from this number. Reply START to resubscribe.",
    "opt_in": "You have successfully been re-subscribed to messages from this number. "
    "Reply HELP for help. Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
    "help": "Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
}
_GSM = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)


@dataclasses.dataclass(frozen=True, slots=True)
class CallbackRecord:
    """One callback the sandbox POSTed (or tried to): for tests and the demo."""

    url: str
    params: tuple[tuple[str, str], ...]
    status_code: int | None
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TextResult:
    """What happened when a customer texted the hub through the sandbox."""

    sid: str
    status_code: int
    response_text: str


@dataclasses.dataclass(slots=True)
class _Injected:
    http_status: int
    code: int
    message: str
    after_accept: bool


def _now_rfc2822() -> str:
    return email.utils.format_datetime(utcnow())


def _segments(body: str) -> int:
    if not body:
        return 1
    single, multi = (160, 153) if set(body) <= _GSM else (70, 67)
    return 1 if len(body) <= single else -(-len(body) // multi)


def _country(number: str) -> str:
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(number, None)) or ""
    except phonenumbers.NumberParseException:
        return ""


def _error(http_status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": http_status,
        },
        status_code=http_status,
    )


def _parse_date_filter(value: str) -> datetime | date:
    try:
        if "T" in value:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        return date.fromisoformat(value)
    except ValueError:
        raise PayloadError("DateSent", "expected YYYY-MM-DD or an ISO 8601 time") from None


def _date_sent_matches(sent: datetime, op: str, bound: datetime | date) -> bool:
    if isinstance(bound, datetime):
        if op == ">":
            return sent >= bound
        if op == "<":
            return sent <= bound
        return sent == bound
    day = sent.date()
    return {">": day >= bound, "<": day <= bound, "": day == bound}[op]


class Sandbox:
    """A fake Twilio account in memory. ``app`` is its Starlette application.

    ``hub_url`` is where the hub listens (inbound texts go to ``hub_url`` +
    ``/webhooks/twilio/sms``); ``signing_url`` is the hub's ``HUB_PUBLIC_URL`` when it
    differs (behind a proxy), for the signatures. ``callback_delay`` is the pause before
    each status step; ``out_of_order`` sends a message's callbacks last-first;
    ``drop_statuses`` are never called back (the resource still moves on, as when a
    callback is lost). ``numbers``, when given, are the only allowed senders (21606).
    These attributes may be changed while it runs.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        hub_url: str,
        *,
        signing_url: str | None = None,
        callback_delay: float = 0.05,
        out_of_order: bool = False,
        drop_statuses: Collection[str] = (),
        numbers: Collection[str] = (),
        call_duration: int = 42,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.hub_url = hub_url.rstrip("/")
        self.signing_url = (signing_url or hub_url).rstrip("/")
        self.callback_delay = callback_delay
        self.out_of_order = out_of_order
        self.drop_statuses = set(drop_statuses)
        self.numbers = set(numbers)
        self.call_duration = call_duration
        self.messages: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.callbacks: list[CallbackRecord] = []
        self._blocked_pairs: set[tuple[str, str]] = set()
        self._blocked_everywhere: set[str] = set()
        self._injected: list[_Injected] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self.app = self._build_app()

    # -- the hub's and the tests' handles -------------------------------------------

    def opt_out(self, number: str, from_: str | None = None) -> None:
        """Block sends to ``number`` from ``from_`` (all our numbers when None): 21610."""
        if from_ is None:
            self._blocked_everywhere.add(number)
        else:
            self._blocked_pairs.add((number, from_))

    def opt_in(self, number: str, from_: str | None = None) -> None:
        """Lift a block set by :meth:`opt_out` or by a STOP (all of them when ``from_`` is None)."""
        if from_ is None:
            self._blocked_everywhere.discard(number)
            self._blocked_pairs = {p for p in self._blocked_pairs if p[0] != number}
        else:
            self._blocked_pairs.discard((number, from_))

    def is_opted_out(self, number: str, from_: str | None) -> bool:
        """Whether a send to ``number`` from ``from_`` would answer 21610."""
        return number in self._blocked_everywhere or (number, from_ or "") in self._blocked_pairs

    def fail_next_create(
        self, http_status: int, code: int, message: str = "", *, after_accept: bool = False
    ) -> None:
        """Make the next Messages/Calls create answer this error.

        With ``after_accept`` the message is created (and progresses) all the same, as
        when Twilio accepted it but the answer was lost: the outcome is unknown.
        """
        text = message or ("Too Many Requests" if http_status == 429 else "Internal error")
        self._injected.append(_Injected(http_status, code, text, after_accept))

    def phone_log(self, number: str) -> list[dict[str, Any]]:
        """Messages a customer's phone sent (``inbound``) and received, oldest first."""
        return [
            {
                "sid": m["sid"],
                "direction": m["direction"],
                "from": m["from"],
                "to": m["to"],
                "body": m["body"],
                "media_urls": m["_media_urls"],
                "status": m["status"],
                "error_code": m["error_code"],
                "date_created": m["date_created"],
            }
            for m in self.messages.values()
            if (m["to"] == number and m["direction"] != "inbound")
            or (m["from"] == number and m["direction"] == "inbound")
        ]

    async def text_hub(
        self, from_: str, to: str, body: str, media_urls: Sequence[str] = ()
    ) -> TextResult:
        """A customer at ``from_`` texts our number ``to``: POST the signed webhook.

        The form has exactly the fields Twilio sends for an incoming SMS/MMS
        (https://www.twilio.com/docs/messaging/guides/webhook-request). As Twilio does, a
        STOP/START keyword blocks/unblocks this pair and gets Twilio's auto-reply; the
        hub's TwiML ``<Message>`` replies are delivered to the phone.
        """
        sid = self._new_sid("MM" if media_urls else "SM")
        resource = self._message_resource(sid, from_, to, body, media_urls, "inbound")
        resource["status"] = "received"
        resource["date_sent"] = resource["date_created"]
        self.messages[sid] = resource
        params = self._inbound_form(resource, media_urls)
        keyword = consent_keyword(body)
        if keyword == "opt_out":
            self.opt_out(from_, to)
        elif keyword == "opt_in":
            self.opt_in(from_, to)
        if keyword is not None:
            self._reply(to, from_, _AUTO_REPLY[keyword])
        path = "/webhooks/twilio/sms"
        signature = sign(self.auth_token, self.signing_url + path, params)
        response = await self._client().post(
            self.hub_url + path,
            content=encode_form(params),
            headers=self._headers(signature),
        )
        if response.status_code == 200:
            for text in _twiml_messages(response.text):
                self._reply(to, from_, text)
        return TextResult(sid, response.status_code, response.text)

    async def settle(self) -> None:
        """Wait until every scheduled status change and callback has happened."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel pending callbacks and close the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- internals --------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await self.aclose()

        routes = [
            Route(f"{_PREFIX}/Messages.json", self._create_message, methods=["POST"]),
            Route(f"{_PREFIX}/Messages.json", self._list_messages, methods=["GET"]),
            Route(f"{_PREFIX}/Messages/{{sid}}.json", self._fetch_message, methods=["GET"]),
            Route(f"{_PREFIX}/Calls.json", self._create_call, methods=["POST"]),
            Route(f"{_PREFIX}/Calls/{{sid}}.json", self._fetch_call, methods=["GET"]),
            Route("/sandbox/sms", self._sandbox_sms, methods=["POST"]),
            Route("/sandbox/phones/{number}/messages", self._sandbox_phone, methods=["GET"]),
            Route("/sandbox/opt-outs", self._sandbox_opt_out, methods=["POST"]),
            Route("/sandbox/opt-outs/{number}", self._sandbox_opt_in, methods=["DELETE"]),
        ]
        app = Starlette(routes=routes, lifespan=lifespan)
        app.state.sandbox = self
        return app

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=15.0)
        return self._http

    @staticmethod
    def _headers(signature: str) -> dict[str, str]:
        return {
            SIGNATURE_HEADER: signature,
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "TwilioProxy/1.1",
        }

    @staticmethod
    def _new_sid(prefix: str) -> str:
        return prefix + secrets.token_hex(16)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _authorized(self, request: Request) -> Response | None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        good = hmac.compare_digest(user.encode(), self.account_sid.encode())
        good &= hmac.compare_digest(password.encode(), self.auth_token.encode())
        if scheme.lower() != "basic" or not good:
            response = _error(401, 20003, "Authenticate")
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return response
        if request.path_params["account_sid"] != self.account_sid:
            return _error(404, 20404, f"The requested resource {request.url.path} was not found")
        return None

    def _message_resource(
        self,
        sid: str,
        from_: str | None,
        to: str,
        body: str,
        media_urls: Sequence[str],
        direction: str,
        messaging_service_sid: str | None = None,
    ) -> dict[str, Any]:
        now = _now_rfc2822()
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": direction,
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": messaging_service_sid,
            "num_media": str(len(media_urls)),
            "num_segments": str(_segments(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
            "to": to,
            "uri": f"{uri}.json",
            "_media_urls": list(media_urls),
            "_callback": None,
        }

    @staticmethod
    def _public(resource: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if not k.startswith("_")}

    def _inbound_form(
        self, resource: dict[str, Any], media_urls: Sequence[str]
    ) -> list[tuple[str, str]]:
        sid, from_, to = resource["sid"], resource["from"], resource["to"]
        params = [
            ("ToCountry", _country(to)),
            ("ToState", ""),
            ("SmsMessageSid", sid),
            ("NumMedia", str(len(media_urls))),
            ("ToCity", ""),
            ("FromZip", ""),
            ("SmsSid", sid),
            ("FromState", ""),
            ("SmsStatus", "received"),
            ("FromCity", ""),
            ("Body", resource["body"]),
            ("FromCountry", _country(from_)),
            ("To", to),
            ("ToZip", ""),
            ("NumSegments", resource["num_segments"]),
            ("MessageSid", sid),
            ("AccountSid", self.account_sid),
            ("From", from_),
            ("ApiVersion", API_VERSION),
        ]
        for index, url in enumerate(media_urls):
            content_type = mimetypes.guess_type(url)[0] or "image/jpeg"
            params += [(f"MediaContentType{index}", content_type), (f"MediaUrl{index}", url)]
        return params

    def _reply(self, from_: str, to: str, body: str) -> None:
        sid = self._new_sid("SM")
        resource = self._message_resource(sid, from_, to, body, (), "outbound-reply")
        resource["status"] = "delivered"
        resource["date_sent"] = resource["date_created"]
        self.messages[sid] = resource

    # -- Messages ---------------------------------------------------------------------

    async def _create_message(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        try:
            form = form_items(await request.form())
        except PayloadError as exc:
            return _error(400, 20001, str(exc))
        fields = {k: v for k, v in reversed(form)}
        media_urls = [v for k, v in form if k == "MediaUrl"]
        to = fields.get("To", "")
        from_ = fields.get("From") or None
        service = fields.get("MessagingServiceSid") or None
        body = fields.get("Body", "")
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not from_ and not service:
            return _error(400, 21603, "A 'From' phone number is required.")
        if not body and not media_urls:
            return _error(400, 21602, "Message body is required.")
        if len(body) > 1600:
            return _error(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        if not _E164.fullmatch(to):
            return _error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if from_ and self.numbers and from_ not in self.numbers:
            return _error(
                400,
                21606,
                f"The From phone number {from_} is not a valid, SMS-capable inbound phone "
                "number or short code for your account.",
            )
        if self.is_opted_out(to, from_):
            return _error(400, 21610, "Attempt to send to unsubscribed recipient")
        injected = self._injected.pop(0) if self._injected else None
        if injected is not None and not injected.after_accept:
            return _error(injected.http_status, injected.code, injected.message)
        sid = self._new_sid("MM" if media_urls else "SM")
        resource = self._message_resource(sid, from_, to, body, media_urls, "outbound-api", service)
        if service and not from_:
            resource["status"] = "accepted"
        resource["_callback"] = fields.get("StatusCallback") or None
        self.messages[sid] = resource
        self._spawn(self._progress_message(sid))
        if injected is not None:
            return _error(injected.http_status, injected.code, injected.message)
        return JSONResponse(self._public(resource), status_code=201)

    async def _fetch_message(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        resource = self.messages.get(request.path_params["sid"])
        if resource is None:
            return _error(404, 20404, f"The requested resource {request.url.path} was not found")
        return JSONResponse(self._public(resource))

    async def _list_messages(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        query = request.query_params
        try:
            page_size = min(max(int(query.get("PageSize", "50")), 1), 1000)
            page = max(int(query.get("Page", "0")), 0)
            bounds = [
                (op, _parse_date_filter(query[f"DateSent{op}"]))
                for op in ("", ">", "<")
                if query.get(f"DateSent{op}")
            ]
        except (ValueError, PayloadError) as exc:
            return _error(400, 20001, f"Invalid parameter: {exc}")
        selected = []
        for resource in reversed(self.messages.values()):
            if query.get("To") and resource["to"] != query["To"]:
                continue
            if query.get("From") and resource["from"] != query["From"]:
                continue
            if bounds:
                sent = resource["date_sent"]
                when = email.utils.parsedate_to_datetime(sent) if sent else None
                if when is None or not all(_date_sent_matches(when, o, b) for o, b in bounds):
                    continue
            selected.append(resource)
        start = page * page_size
        chunk = selected[start : start + page_size]
        filters = [(k, v) for k, v in query.multi_items() if k not in ("Page", "PageSize")]
        filters = [(k, v) for k, v in filters if k != "PageToken"]
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"

        def page_uri(number: int, token: str | None = None) -> str:
            params = [*filters, ("PageSize", str(page_size)), ("Page", str(number))]
            if token:
                params.append(("PageToken", token))
            return f"{base}?{urlencode(params)}"

        has_next = start + page_size < len(selected)
        return JSONResponse(
            {
                "end": start + max(len(chunk) - 1, 0),
                "first_page_uri": page_uri(0),
                "messages": [self._public(r) for r in chunk],
                "next_page_uri": page_uri(page + 1, "PA" + chunk[-1]["sid"]) if has_next else None,
                "page": page,
                "page_size": page_size,
                "previous_page_uri": page_uri(page - 1) if page > 0 else None,
                "start": start,
                "uri": page_uri(page),
            }
        )

    def _message_plan(self, to: str) -> list[tuple[str, int | None]]:
        failure = _TEST_NUMBERS.get(to[-4:])
        if failure is None:
            return [("sent", None), ("delivered", None)]
        status, code = failure
        if status == "failed":
            return [(status, code)]
        return [("sent", None), (status, code)]

    async def _progress_message(self, sid: str) -> None:
        resource = self.messages[sid]
        held: list[list[tuple[str, str]]] = []
        for status, code in self._message_plan(resource["to"]):
            await asyncio.sleep(self.callback_delay)
            now = _now_rfc2822()
            resource.update(status=status, date_updated=now)
            if status == "sent":
                resource["date_sent"] = now
            if code is not None:
                resource.update(error_code=code, error_message=_ERROR_TEXT.get(code))
            if resource["_callback"] and status not in self.drop_statuses:
                params = self._status_form(resource)
                if self.out_of_order:
                    held.append(params)
                else:
                    await self._post(resource["_callback"], params)
        for params in reversed(held):
            await self._post(resource["_callback"], params)

    def _status_form(self, resource: dict[str, Any]) -> list[tuple[str, str]]:
        sid, status = resource["sid"], resource["status"]
        params = [
            ("SmsSid", sid),
            ("SmsStatus", status),
            ("MessageStatus", status),
            ("To", resource["to"]),
        ]
        if resource["messaging_service_sid"]:
            params.append(("MessagingServiceSid", resource["messaging_service_sid"]))
        params += [("MessageSid", sid), ("AccountSid", self.account_sid)]
        if resource["from"]:
            params.append(("From", resource["from"]))
        params.append(("ApiVersion", API_VERSION))
        if resource["error_code"] is not None:
            params.append(("ErrorCode", str(resource["error_code"])))
        if status in ("delivered", "undelivered"):
            params.append(("RawDlrDoneDate", utcnow().strftime("%y%m%d%H%M")))
        return params

    async def _post(self, url: str, params: list[tuple[str, str]]) -> None:
        signature = sign(self.auth_token, url, params)
        try:
            response = await self._client().post(
                url, content=encode_form(params), headers=self._headers(signature)
            )
        except httpx.HTTPError as exc:
            _log.warning("sandbox callback failed: %s", type(exc).__name__)
            self.callbacks.append(CallbackRecord(url, tuple(params), None, type(exc).__name__))
            return
        self.callbacks.append(CallbackRecord(url, tuple(params), response.status_code))

    # -- Calls ------------------------------------------------------------------------

    async def _create_call(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        try:
            form = form_items(await request.form())
        except PayloadError as exc:
            return _error(400, 20001, str(exc))
        fields = {k: v for k, v in reversed(form)}
        to, from_ = fields.get("To", ""), fields.get("From", "")
        if not to:
            return _error(400, 21201, "No 'To' number is specified")
        if not from_:
            return _error(400, 21213, "No 'From' number is specified")
        if not (fields.get("Url") or fields.get("Twiml") or fields.get("ApplicationSid")):
            return _error(400, 21205, "Url parameter is required.")
        if not _E164.fullmatch(to):
            return _error(400, 21217, f"Phone number {to} is not a valid phone number")
        injected = self._injected.pop(0) if self._injected else None
        if injected is not None and not injected.after_accept:
            return _error(injected.http_status, injected.code, injected.message)
        sid = self._new_sid("CA")
        now = _now_rfc2822()
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{sid}"
        resource: dict[str, Any] = {
            "account_sid": self.account_sid,
            "annotation": None,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": now,
            "date_updated": now,
            "direction": "outbound-api",
            "duration": None,
            "end_time": None,
            "forwarded_from": None,
            "from": from_,
            "from_formatted": from_,
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": sid,
            "start_time": None,
            "status": "queued",
            "subresource_uris": {"recordings": f"{uri}/Recordings.json"},
            "to": to,
            "to_formatted": to,
            "trunk_sid": None,
            "uri": f"{uri}.json",
            "_callback": fields.get("StatusCallback") or None,
            "_events": {v for k, v in form if k == "StatusCallbackEvent"} or {"completed"},
        }
        self.calls[sid] = resource
        self._spawn(self._progress_call(sid))
        if injected is not None:
            return _error(injected.http_status, injected.code, injected.message)
        return JSONResponse(self._public(resource), status_code=201)

    async def _fetch_call(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        resource = self.calls.get(request.path_params["sid"])
        if resource is None:
            return _error(404, 20404, f"The requested resource {request.url.path} was not found")
        return JSONResponse(self._public(resource))

    async def _progress_call(self, sid: str) -> None:
        resource = self.calls[sid]
        steps = (
            ("initiated", "initiated"),
            ("ringing", "ringing"),
            ("answered", "in-progress"),
            ("completed", "completed"),
        )
        for sequence, (event, status) in enumerate(steps):
            await asyncio.sleep(self.callback_delay)
            now = _now_rfc2822()
            resource.update(status=status, date_updated=now)
            if status == "in-progress":
                resource["start_time"] = now
            if status == "completed":
                resource.update(end_time=now, duration=str(self.call_duration))
            if resource["_callback"] and event in resource["_events"]:
                params = [
                    ("Called", resource["to"]),
                    ("Direction", "outbound-api"),
                    ("Timestamp", now),
                    ("CallbackSource", "call-progress-events"),
                    ("SequenceNumber", str(sequence)),
                    ("CallSid", sid),
                    ("To", resource["to"]),
                    ("ApiVersion", API_VERSION),
                    ("CallStatus", status),
                    ("From", resource["from"]),
                    ("AccountSid", self.account_sid),
                    ("Caller", resource["from"]),
                ]
                if status == "completed":
                    minutes = str(-(-self.call_duration // 60))
                    params += [("CallDuration", str(self.call_duration)), ("Duration", minutes)]
                await self._post(resource["_callback"], params)

    # -- the customers' phones -----------------------------------------------------------

    async def _sandbox_sms(self, request: Request) -> Response:
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return _sandbox_error("invalid_json", "expected a JSON object")
        from_, to, body = payload.get("from"), payload.get("to"), payload.get("body", "")
        media = payload.get("media_urls", [])
        if not isinstance(from_, str) or not _E164.fullmatch(from_):
            return _sandbox_error("invalid_from", "from must be an E.164 number")
        if not isinstance(to, str) or not _E164.fullmatch(to):
            return _sandbox_error("invalid_to", "to must be an E.164 number")
        if not isinstance(body, str) or not isinstance(media, list):
            return _sandbox_error("invalid_body", "body must be text, media_urls a list")
        try:
            result = await self.text_hub(from_, to, body, [str(url) for url in media])
        except httpx.HTTPError as exc:
            return _sandbox_error("hub_unreachable", type(exc).__name__, 502)
        return JSONResponse({"sid": result.sid, "hub_status": result.status_code})

    async def _sandbox_phone(self, request: Request) -> Response:
        return JSONResponse({"messages": self.phone_log(request.path_params["number"])})

    async def _sandbox_opt_out(self, request: Request) -> Response:
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        number = payload.get("number") if isinstance(payload, dict) else None
        from_ = payload.get("from") if isinstance(payload, dict) else None
        if not isinstance(number, str) or not (from_ is None or isinstance(from_, str)):
            return _sandbox_error("invalid_body", 'expected {"number": ..., "from"?: ...}')
        self.opt_out(number, from_)
        return Response(status_code=204)

    async def _sandbox_opt_in(self, request: Request) -> Response:
        self.opt_in(request.path_params["number"], request.query_params.get("from"))
        return Response(status_code=204)


def _sandbox_error(code: str, message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _twiml_messages(text: str) -> list[str]:
    """The texts of ``<Message>`` verbs in a TwiML answer (empty if it is not TwiML)."""
    try:
        # The hub's own answer, parsed by the stdlib (expat limits entity expansion).
        root = ET.fromstring(text)  # noqa: S314
    except ET.ParseError:
        return []
    texts = []
    for element in root.iter("Message"):
        body = element.findtext("Body")
        texts.append(body if body is not None else (element.text or "").strip())
    return [t for t in texts if t]


def create_app(
    account_sid: str,
    auth_token: str,
    hub_url: str,
    *,
    callback_delay: float = 0.05,
    out_of_order: bool = False,
    drop_statuses: Collection[str] = (),
) -> Starlette:
    """A sandbox app; its :class:`Sandbox` is ``app.state.sandbox``."""
    sandbox = Sandbox(
        account_sid,
        auth_token,
        hub_url,
        callback_delay=callback_delay,
        out_of_order=out_of_order,
        drop_statuses=drop_statuses,
    )
    return sandbox.app


class _Server(uvicorn.Server):
    """Leaves signal handling to the process that runs it (the hub or pytest)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn in a background task; yields its base URL.

    ``port`` 0 picks a free port. The server stops when the block exits.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped while starting")
            await asyncio.sleep(0.005)
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def run_sandbox(
    sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``sandbox`` on loopback; yields its base URL (``TWILIO_API_BASE``)."""
    async with serve(sandbox.app, host, port) as base_url:
        yield base_url
