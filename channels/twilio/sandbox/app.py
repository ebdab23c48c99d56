"""The sandbox's state and its Starlette application (see the package docstring)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import email.utils
import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Sequence
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channels.twilio.errors import PayloadError
from channels.twilio.forms import encode_form, form_items
from channels.twilio.parse import consent_keyword
from channels.twilio.sandbox import shapes
from channels.twilio.sandbox.calls import CallResult, Voice
from channels.twilio.sandbox.media import MediaFile, StoredMedia, media_path, media_routes, stored
from channels.twilio.sandbox.phones import phone_routes
from channels.twilio.sandbox.shapes import API_VERSION, E164, error_response, not_found
from channels.twilio.signature import SIGNATURE_HEADER, sign

__all__ = ["CallbackRecord", "MediaFile", "Sandbox", "TextResult", "create_app"]

_log = logging.getLogger(__name__)

_PREFIX = f"/{API_VERSION}/Accounts/{{account_sid}}"


@dataclasses.dataclass(frozen=True, slots=True)
class CallbackRecord:
    """One callback the sandbox POSTed (``status_code`` None: it could not connect)."""

    url: str
    params: tuple[tuple[str, str], ...]
    status_code: int | None
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TextResult:
    """What the hub answered when a customer texted it through the sandbox.

    ``media_urls`` are the form's ``MediaUrl{N}``, in order.
    """

    sid: str
    status_code: int
    response_text: str
    media_urls: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class _Injected:
    http_status: int
    code: int
    message: str
    after_accept: bool


@dataclasses.dataclass(slots=True)
class _Pending:
    """What the sandbox keeps beside a resource: where to call back, for which events."""

    callback: str | None
    events: frozenset[str] = frozenset()
    media_urls: tuple[str, ...] = ()


class Sandbox:
    """A fake Twilio account in memory; ``app`` is its Starlette application.

    ``hub_url`` is where the hub listens: texts go to ``hub_url/webhooks/twilio/sms``.
    ``signing_url`` is the hub's ``HUB_PUBLIC_URL`` when that differs (a proxy), for the
    signatures. ``callback_delay`` is the pause before each status step;
    ``out_of_order`` sends a message's callbacks last first; ``drop_statuses`` are never
    called back (the resource still moves on, as when a callback is lost); ``numbers``,
    when given, are the only senders allowed (else 21606). ``base_url`` is where the
    sandbox itself is served, for the URLs of the media it hosts (``run_sandbox`` sets
    it); ``media_redirect`` makes media GETs redirect there (``channels.twilio.sandbox.
    media``). ``callbacks_first`` makes a create answer only after its message's status
    callbacks were delivered (Twilio's callbacks may reach the hub before its REST answer
    reaches the sender). ``on_accept``, when set, is called with each Message resource
    the sandbox created, before its answer is sent (a crash test kills the sender there,
    between the provider's acceptance and the hub's record). All may change while it runs.
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
        base_url: str | None = None,
        media_redirect: str | None = None,
        callbacks_first: bool = False,
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
        self.base_url = base_url.rstrip("/") if base_url else None
        self.media_redirect = media_redirect
        self.callbacks_first = callbacks_first
        self.on_accept: Callable[[dict[str, Any]], None] | None = None
        #: Message and Call resources by sid, as the REST API shows them, oldest first.
        self.messages: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        #: Media the sandbox hosts, by media sid, oldest first.
        self.media: dict[str, StoredMedia] = {}
        #: Every callback POSTed, in the order sent.
        self.callbacks: list[CallbackRecord] = []
        self._pending: dict[str, _Pending] = {}
        self._blocked_pairs: set[tuple[str, str]] = set()
        self._blocked_everywhere: set[str] = set()
        self._injected: list[_Injected] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        # Few callbacks in flight at once: a backlog inside httpx's connection pool makes
        # every pool event scan the whole queue (encode/httpcore#1035).
        self._posting = asyncio.Semaphore(20)
        #: Calls to the hub, TwiML, recordings (``channels.twilio.sandbox.calls``).
        self.voice = Voice(self)
        self.app = self._build_app()

    # -- handles for the hub, the demo and tests ------------------------------------------

    def opt_out(self, number: str, from_: str | None = None) -> None:
        """Sends to ``number`` from ``from_`` (all senders when None) now fail with 21610."""
        if from_ is None:
            self._blocked_everywhere.add(number)
        else:
            self._blocked_pairs.add((number, from_))

    def opt_in(self, number: str, from_: str | None = None) -> None:
        """Lift an opt-out of ``number`` from ``from_`` (every one when None)."""
        if from_ is None:
            self._blocked_everywhere.discard(number)
            self._blocked_pairs = {p for p in self._blocked_pairs if p[0] != number}
        else:
            self._blocked_pairs.discard((number, from_))

    def is_opted_out(self, number: str, from_: str | None) -> bool:
        """Whether a send to ``number`` from ``from_`` answers 21610."""
        return number in self._blocked_everywhere or (number, from_ or "") in self._blocked_pairs

    def fail_next_create(
        self, http_status: int, code: int, message: str = "", *, after_accept: bool = False
    ) -> None:
        """Make the next Messages or Calls create answer this error (queued, one per call).

        With ``after_accept`` the resource is created and moves on all the same, as when
        Twilio accepted it but the answer was lost: the sender's outcome is unknown.
        """
        text = message or ("Too Many Requests" if http_status == 429 else "Internal error")
        self._injected.append(_Injected(http_status, code, text, after_accept))

    def phone_log(self, number: str) -> list[dict[str, Any]]:
        """What a customer's phone sent (``inbound``) and received, oldest first."""
        return [
            {
                "sid": m["sid"],
                "direction": m["direction"],
                "from": m["from"],
                "to": m["to"],
                "body": m["body"],
                "media_urls": list(self._pending[m["sid"]].media_urls),
                "status": m["status"],
                "error_code": m["error_code"],
                "date_created": m["date_created"],
            }
            for m in self.messages.values()
            if (m["to"] == number and m["direction"] != "inbound")
            or (m["from"] == number and m["direction"] == "inbound")
        ]

    async def text_hub(
        self,
        from_: str,
        to: str,
        body: str,
        media_urls: Sequence[str] = (),
        *,
        media: Sequence[MediaFile] = (),
    ) -> TextResult:
        """A customer at ``from_`` texts our number ``to``: POST the signed webhook.

        The form has the fields Twilio sends for an incoming SMS/MMS
        (https://www.twilio.com/docs/messaging/guides/webhook-request). ``media_urls``
        go into it as given (content type guessed from the name); each of ``media``
        becomes a Media resource hosted here, behind Basic auth, listed after them
        (https://www.twilio.com/docs/messaging/api/media-resource). As Twilio does,
        STOP/START block/unblock this pair and get Twilio's auto-reply. The hub's TwiML
        ``<Message>`` replies are delivered to the phone. Raises ``httpx.HTTPError`` if
        the hub cannot be reached.
        """
        if media and not self.base_url:
            raise RuntimeError("hosting media needs base_url: serve with run_sandbox first")
        sid = self._new_sid("MM" if media_urls or media else "SM")
        hosted = [stored(self._new_sid("ME"), sid, file) for file in media]
        urls = [*media_urls, *(self._media_url(item) for item in hosted)]
        types = [*(None for _ in media_urls), *(item.content_type for item in hosted)]
        resource = self._add_message(sid, from_, to, body, urls, "inbound", None)
        resource.update(status="received", date_sent=resource["date_created"])
        self.media.update((item.sid, item) for item in hosted)
        params = shapes.inbound_form(self.account_sid, resource, urls, types)
        keyword = consent_keyword(body)
        if keyword == "opt_out":
            self.opt_out(from_, to)
        elif keyword == "opt_in":
            self.opt_in(from_, to)
        if keyword is not None:
            self._reply(to, from_, shapes.AUTO_REPLY[keyword])
        path = "/webhooks/twilio/sms"
        signature = sign(self.auth_token, self.signing_url + path, params)
        response = await self._client().post(
            self.hub_url + path, content=encode_form(params), headers=_headers(signature)
        )
        if response.status_code == 200:
            for text in shapes.twiml_messages(response.text):
                self._reply(to, from_, text)
        return TextResult(sid, response.status_code, response.text, tuple(urls))

    async def call_hub(
        self, from_: str, to: str, *, answer: bool = True, voicemail: str | None = None
    ) -> CallResult:
        """A customer at ``from_`` phones our number ``to`` (``channels.twilio.sandbox.calls``).

        ``answer``: whether an agent picks up; ``voicemail``: the message the caller
        leaves if asked (None: they hang up). https://www.twilio.com/docs/voice/twiml
        """
        return await self.voice.call_hub(from_, to, answer=answer, voicemail=voicemail)

    async def settle(self) -> None:
        """Wait until every scheduled status change and callback has happened."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel pending status changes and close the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- plumbing -------------------------------------------------------------------------

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
            Route(f"{_PREFIX}/Calls.json", self._list_calls, methods=["GET"]),
            Route(f"{_PREFIX}/Calls/{{sid}}.json", self._fetch_call, methods=["GET"]),
            *media_routes(self, _PREFIX),
            *phone_routes(self),
            *self.voice.routes(_PREFIX),
        ]
        app = Starlette(routes=routes, lifespan=lifespan)
        app.state.sandbox = self
        return app

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=15.0)
        return self._http

    @staticmethod
    def _new_sid(prefix: str) -> str:
        return prefix + secrets.token_hex(16)

    def _media_url(self, media: StoredMedia) -> str:
        return f"{self.base_url}{media_path(self.account_sid, media.message_sid, media.sid)}"

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def denied(self, request: Request) -> Response | None:
        """The 401 (or 404 for another account) of a request without this account's auth."""
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        good = hmac.compare_digest(user.encode(), self.account_sid.encode())
        good &= hmac.compare_digest(password.encode(), self.auth_token.encode())
        if scheme.lower() != "basic" or not good:
            response = error_response(401, 20003, "Authenticate")
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return response
        if request.path_params["account_sid"] != self.account_sid:
            return not_found(request.url.path)
        return None

    def _take_injected(self) -> _Injected | None:
        return self._injected.pop(0) if self._injected else None

    def _add_message(
        self,
        sid: str,
        from_: str | None,
        to: str,
        body: str,
        media_urls: Sequence[str],
        direction: str,
        callback: str | None,
        service: str | None = None,
    ) -> dict[str, Any]:
        resource = shapes.message_resource(
            self.account_sid, sid, from_, to, body, len(media_urls), direction, service
        )
        self.messages[sid] = resource
        self._pending[sid] = _Pending(callback, media_urls=tuple(media_urls))
        return resource

    def _reply(self, from_: str, to: str, body: str) -> None:
        resource = self._add_message(
            self._new_sid("SM"), from_, to, body, (), "outbound-reply", None
        )
        resource.update(status="delivered", date_sent=resource["date_created"])

    async def _post(self, url: str, params: list[tuple[str, str]]) -> None:
        signature = sign(self.auth_token, url, params)
        try:
            async with self._posting:
                response = await self._client().post(
                    url, content=encode_form(params), headers=_headers(signature)
                )
        except httpx.HTTPError as exc:
            _log.warning("sandbox callback not delivered: %s", type(exc).__name__)
            self.callbacks.append(CallbackRecord(url, tuple(params), None, type(exc).__name__))
            return
        self.callbacks.append(CallbackRecord(url, tuple(params), response.status_code))

    # -- Messages -------------------------------------------------------------------------

    async def _create_message(self, request: Request) -> Response:
        if (denied := self.denied(request)) is not None:
            return denied
        try:
            form = form_items(await request.form())
        except PayloadError as exc:
            return error_response(400, 20001, str(exc))
        fields = dict(reversed(form))
        media_urls = [v for k, v in form if k == "MediaUrl"]
        to, body = fields.get("To", ""), fields.get("Body", "")
        from_ = fields.get("From") or None
        service = fields.get("MessagingServiceSid") or None
        if not to:
            return error_response(400, 21604, "A 'To' phone number is required.")
        if not from_ and not service:
            return error_response(400, 21603, "A 'From' phone number is required.")
        if not body and not media_urls:
            return error_response(400, 21602, "Message body is required.")
        if len(body) > 1600:
            text = "The concatenated message body exceeds the 1600 character limit."
            return error_response(400, 21617, text)
        if not E164.fullmatch(to):
            return error_response(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if from_ and self.numbers and from_ not in self.numbers:
            text = (
                f"The From phone number {from_} is not a valid, SMS-capable inbound phone "
                "number or short code for your account."
            )
            return error_response(400, 21606, text)
        if self.is_opted_out(to, from_):
            return error_response(400, 21610, "Attempt to send to unsubscribed recipient")
        injected = self._take_injected()
        if injected is not None and not injected.after_accept:
            return error_response(injected.http_status, injected.code, injected.message)
        sid = self._new_sid("MM" if media_urls else "SM")
        callback = fields.get("StatusCallback") or None
        resource = self._add_message(
            sid, from_, to, body, media_urls, "outbound-api", callback, service
        )
        if service and not from_:
            resource["status"] = "accepted"
        answer = dict(resource)  # as created, even when the callbacks go first
        if self.on_accept is not None:
            self.on_accept(answer)
        if self.callbacks_first:
            await self._progress_message(sid)
        else:
            self._spawn(self._progress_message(sid))
        if injected is not None:
            return error_response(injected.http_status, injected.code, injected.message)
        return JSONResponse(answer, status_code=201)

    async def _fetch_message(self, request: Request) -> Response:
        if (denied := self.denied(request)) is not None:
            return denied
        resource = self.messages.get(request.path_params["sid"])
        if resource is None:
            return not_found(request.url.path)
        return JSONResponse(resource)

    async def _list_messages(self, request: Request) -> Response:
        if (denied := self.denied(request)) is not None:
            return denied
        query = request.query_params
        try:
            page, page_size = shapes.paging(query)
            bounds = [
                (op, shapes.parse_date_filter(query[f"DateSent{op}"]))
                for op in ("", ">", "<")
                if query.get(f"DateSent{op}")
            ]
        except ValueError as exc:
            return error_response(400, 20001, f"Invalid parameter: {exc}")
        selected = []
        for resource in reversed(self.messages.values()):
            if query.get("To") and resource["to"] != query["To"]:
                continue
            if query.get("From") and resource["from"] != query["From"]:
                continue
            if bounds:
                sent = resource["date_sent"]
                when = email.utils.parsedate_to_datetime(sent) if sent else None
                if when is None or not all(
                    shapes.date_sent_matches(when, op, bound) for op, bound in bounds
                ):
                    continue
            selected.append(resource)
        kept = [(k, v) for k, v in query.multi_items() if k not in shapes.PAGING]
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"
        return JSONResponse(shapes.list_page("messages", selected, base, kept, page, page_size))

    async def _progress_message(self, sid: str) -> None:
        resource = self.messages[sid]
        callback = self._pending[sid].callback
        held: list[tuple[str, list[tuple[str, str]]]] = []
        for status, code in shapes.message_plan(resource["to"]):
            await asyncio.sleep(self.callback_delay)
            now = shapes.now_rfc2822()
            resource.update(status=status, date_updated=now)
            if status == "sent":
                resource["date_sent"] = now
            if code is not None:
                resource.update(error_code=code, error_message=shapes.error_text(code))
            if callback is None or status in self.drop_statuses:
                continue
            params = shapes.status_form(self.account_sid, resource)
            if self.out_of_order:
                held.append((callback, params))
            else:
                await self._post(callback, params)
        for url, params in reversed(held):
            await self._post(url, params)

    # -- Calls ----------------------------------------------------------------------------

    async def _create_call(self, request: Request) -> Response:
        if (denied := self.denied(request)) is not None:
            return denied
        try:
            form = form_items(await request.form())
        except PayloadError as exc:
            return error_response(400, 20001, str(exc))
        fields = dict(reversed(form))
        to, from_ = fields.get("To", ""), fields.get("From", "")
        if not to:
            return error_response(400, 21201, "No 'To' number is specified")
        if not from_:
            return error_response(400, 21213, "No 'From' number is specified")
        if not (fields.get("Url") or fields.get("Twiml") or fields.get("ApplicationSid")):
            return error_response(400, 21205, "Url parameter is required.")
        if not E164.fullmatch(to):
            return error_response(400, 21217, f"Phone number {to} is not a valid phone number")
        injected = self._take_injected()
        if injected is not None and not injected.after_accept:
            return error_response(injected.http_status, injected.code, injected.message)
        sid = self._new_sid("CA")
        resource = shapes.call_resource(self.account_sid, sid, from_, to)
        events = frozenset(v for k, v in form if k == "StatusCallbackEvent") or {"completed"}
        self.calls[sid] = resource
        self._pending[sid] = _Pending(fields.get("StatusCallback") or None, frozenset(events))
        self._spawn(self.voice.progress_created(sid, fields.get("Url") or None))
        if injected is not None:
            return error_response(injected.http_status, injected.code, injected.message)
        return JSONResponse(resource, status_code=201)

    async def _list_calls(self, request: Request) -> Response:
        """Calls newest first, filtered by ``To``, ``From``, ``ParentCallSid``, ``Status``.

        https://www.twilio.com/docs/voice/api/call-resource#read-multiple-call-resources
        """
        if (denied := self.denied(request)) is not None:
            return denied
        query = request.query_params
        try:
            page, page_size = shapes.paging(query)
        except ValueError as exc:
            return error_response(400, 20001, f"Invalid parameter: {exc}")
        filters = {
            "To": "to",
            "From": "from",
            "ParentCallSid": "parent_call_sid",
            "Status": "status",
        }
        wanted = [(field, query[name]) for name, field in filters.items() if query.get(name)]
        selected = [
            resource
            for resource in reversed(self.calls.values())
            if all(resource[field] == value for field, value in wanted)
        ]
        kept = [(k, v) for k, v in query.multi_items() if k not in shapes.PAGING]
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls.json"
        return JSONResponse(shapes.list_page("calls", selected, base, kept, page, page_size))

    async def _fetch_call(self, request: Request) -> Response:
        if (denied := self.denied(request)) is not None:
            return denied
        resource = self.calls.get(request.path_params["sid"])
        if resource is None:
            return not_found(request.url.path)
        return JSONResponse(resource)


def _headers(signature: str) -> dict[str, str]:
    return {
        SIGNATURE_HEADER: signature,
        "Content-Type": "application/x-www-form-urlencoded",
        "User-Agent": "TwilioProxy/1.1",
    }


def create_app(
    account_sid: str,
    auth_token: str,
    hub_url: str,
    *,
    callback_delay: float = 0.05,
    out_of_order: bool = False,
    drop_statuses: Collection[str] = (),
    signing_url: str | None = None,
) -> Starlette:
    """A sandbox application; its :class:`Sandbox` is ``app.state.sandbox``."""
    sandbox = Sandbox(
        account_sid,
        auth_token,
        hub_url,
        signing_url=signing_url,
        callback_delay=callback_delay,
        out_of_order=out_of_order,
        drop_statuses=drop_statuses,
    )
    return sandbox.app
