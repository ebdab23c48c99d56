"""Send and look up SMS (and calls) through the official Twilio SDK's async client.

https://www.twilio.com/docs/messaging/api/message-resource

The SDK has no base-URL setting, so :class:`_RebasedHttpClient` rewrites the scheme and
host of each request to ``TWILIO_API_BASE`` (the built-in sandbox or a test fake on
loopback); with the default base nothing is rewritten. aiohttp sessions must be created
inside a running event loop, so the SDK client is built on first use, not in
``__init__``. Every SDK or aiohttp error becomes a :class:`~channels.twilio.errors.ApiError`.

Sending is not idempotent at Twilio: after an :class:`~channels.twilio.errors.ApiError`
whose ``outcome`` is ``UNKNOWN``, look the message up (:meth:`TwilioClient.list_messages`
by sender, recipient and time) before sending again.

:meth:`TwilioClient.delete_recording` deletes a call recording (the retention job).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from channels.twilio.errors import ApiError, TransportError
from channels.twilio.records import CallRecord, MessageRecord

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = ["DEFAULT_API_BASE", "TwilioClient"]

DEFAULT_API_BASE = "https://api.twilio.com"

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# aiohttp 3.12+ deprecates BasicAuth and ``auth=``, which the SDK uses on every request.
_AIOHTTP_AUTH_WARNINGS = (
    r"BasicAuth is deprecated",
    r"The 'auth' parameter is deprecated",
)


def _quiet_aiohttp_auth_warnings() -> None:
    for message in _AIOHTTP_AUTH_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)


class _DebugLogger(logging.LoggerAdapter[logging.Logger]):
    """The SDK logs request URLs and query parameters (phone numbers) at INFO: demote."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


class _RebasedHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The SDK's aiohttp client, sending every request to ``api_base`` instead."""

    def __init__(self, api_base: str, timeout: float) -> None:
        super().__init__(pool_connections=False, logger=_DebugLogger(_log, {}))
        base = urlsplit(api_base)
        self._scheme = base.scheme
        self._netloc = base.netloc
        self._prefix = base.path.rstrip("/")
        self._rebase = api_base.rstrip("/") != DEFAULT_API_BASE
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if self._rebase:
            parts = urlsplit(url)
            url = urlunsplit(
                (self._scheme, self._netloc, self._prefix + parts.path, parts.query, "")
            )
        return await super().request(method, url, *args, **kwargs)


def _wrap(exc: Exception) -> ApiError:
    if isinstance(exc, TwilioRestException):
        code = exc.code if isinstance(exc.code, int) and exc.code != exc.status else None
        more_info = f"https://www.twilio.com/docs/errors/{code}" if code else None
        return ApiError(code, exc.status, str(exc.msg), more_info)
    if isinstance(exc, (aiohttp.ClientError, TimeoutError)):
        return TransportError(f"{type(exc).__name__}: {exc}")
    # TwilioServiceException (RFC 9457 bodies) and "Unable to fetch page" (list errors,
    # which carry the raw response as their second argument).
    code = getattr(exc, "code", None)
    status = getattr(exc, "status", None)
    response = exc.args[1] if len(exc.args) > 1 else None
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
        try:
            code = json.loads(response.text).get("code")
        except (ValueError, AttributeError):
            code = None
    message = getattr(exc, "detail", None) or (exc.args[0] if exc.args else "")
    return ApiError(
        code if isinstance(code, int) else None,
        status if isinstance(status, int) else None,
        str(message),
    )


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _date(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _message(instance: Any) -> MessageRecord:
    return MessageRecord(
        sid=str(instance.sid),
        status=str(instance.status),
        direction=str(instance.direction),
        from_=instance.from_,
        to=instance.to,
        body=instance.body,
        error_code=_int(instance.error_code),
        error_message=instance.error_message,
        num_segments=_int(instance.num_segments),
        num_media=_int(instance.num_media),
        date_created=_date(instance.date_created),
        date_sent=_date(instance.date_sent),
        date_updated=_date(instance.date_updated),
        account_sid=instance.account_sid,
        messaging_service_sid=instance.messaging_service_sid,
    )


def _call(instance: Any) -> CallRecord:
    return CallRecord(
        sid=str(instance.sid),
        status=str(instance.status),
        direction=str(instance.direction),
        from_=instance._from,  # the SDK's CallInstance names it so; MessageInstance: from_
        to=instance.to,
        duration=_int(instance.duration),
        date_created=_date(instance.date_created),
        start_time=_date(instance.start_time),
        end_time=_date(instance.end_time),
        account_sid=instance.account_sid,
    )


class TwilioClient:
    """Async access to Twilio Messages and Calls for one account.

    Use it as ``async with TwilioClient(sid, token, api_base) as twilio: ...`` or call
    :meth:`aclose` when done. One instance may serve many concurrent requests.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        api_base: str = DEFAULT_API_BASE,
        *,
        timeout: float = 15.0,
    ) -> None:
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._api_base = api_base
        self._timeout = timeout
        self._http: _RebasedHttpClient | None = None
        self._sdk: Any = None

    def __repr__(self) -> str:
        return f"TwilioClient(account_sid={self._account_sid!r}, api_base={self._api_base!r})"

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioClient:
        """A client for ``TWILIO_ACCOUNT_SID``/``TWILIO_AUTH_TOKEN`` at ``TWILIO_API_BASE``."""
        if not settings.twilio_account_sid or not settings.twilio_auth_token:
            raise ValueError("the twilio channel is off: TWILIO_ACCOUNT_SID/AUTH_TOKEN unset")
        return cls(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            settings.twilio_api_base,
        )

    async def __aenter__(self) -> TwilioClient:
        self._client()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session (the client may be used again afterwards)."""
        http, self._http, self._sdk = self._http, None, None
        if http is not None:
            await http.close()

    def _client(self) -> Any:
        # Called from coroutines only: aiohttp needs the running loop.
        if self._sdk is None:
            _quiet_aiohttp_auth_warnings()
            self._http = _RebasedHttpClient(self._api_base, self._timeout)
            self._sdk = Client(self._account_sid, self._auth_token, http_client=self._http)
        return self._sdk

    async def _do(self, action: Callable[[Any], Awaitable[_T]]) -> _T:
        try:
            return await action(self._client())
        except (TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            raise _wrap(exc) from exc

    async def send_sms(
        self,
        *,
        from_: str,
        to: str,
        body: str | None = None,
        media_urls: Sequence[str] = (),
        status_callback: str | None = None,
    ) -> MessageRecord:
        """Create a Message (send an SMS, or an MMS with ``media_urls``).

        Returns the new resource: ``sid`` (the MessageSid to store) and ``status``
        (``queued``). ``status_callback`` is the hub's
        ``HUB_PUBLIC_URL/webhooks/twilio/sms/status``. Raises :class:`ApiError`; its
        ``outcome`` says whether to retry. Not idempotent: see the module docstring.
        https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource
        """
        kwargs: dict[str, Any] = {"to": to, "from_": from_}
        if body is not None:
            kwargs["body"] = body
        if media_urls:
            kwargs["media_url"] = list(media_urls)
        if status_callback:
            kwargs["status_callback"] = status_callback
        instance = await self._do(lambda c: c.messages.create_async(**kwargs))
        _log.info("twilio message created sid=%s status=%s", instance.sid, instance.status)
        return _message(instance)

    async def fetch_message(self, sid: str) -> MessageRecord:
        """Fetch one Message by its sid (settles a lost status callback).

        A sid Twilio does not know raises :class:`ApiError` with ``http_status`` 404.
        https://www.twilio.com/docs/messaging/api/message-resource#fetch-a-message-resource
        """
        instance = await self._do(lambda c: c.messages(sid).fetch_async())
        return _message(instance)

    async def list_messages(
        self,
        *,
        sent_after: datetime | None = None,
        sent_before: datetime | None = None,
        to: str | None = None,
        from_: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> list[MessageRecord]:
        """Messages of the account, newest first, following Twilio's pages.

        ``sent_after``/``sent_before`` filter on ``DateSent`` (inclusive, UTC); ``to`` and
        ``from_`` narrow to one conversation. For the daily reconciliation and to settle an
        unknown send outcome.
        https://www.twilio.com/docs/messaging/api/message-resource#read-multiple-message-resources
        """
        kwargs: dict[str, Any] = {"limit": limit, "page_size": page_size}
        if sent_after is not None:
            kwargs["date_sent_after"] = sent_after
        if sent_before is not None:
            kwargs["date_sent_before"] = sent_before
        if to is not None:
            kwargs["to"] = to
        if from_ is not None:
            kwargs["from_"] = from_
        instances = await self._do(lambda c: c.messages.list_async(**kwargs))
        return [_message(instance) for instance in instances]

    async def list_calls(
        self,
        *,
        to: str | None = None,
        from_: str | None = None,
        parent_sid: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> list[CallRecord]:
        """Calls of the account, newest first, following Twilio's pages.

        ``to``, ``from_`` and ``parent_sid`` narrow the list (a click-to-call whose
        answer never reached us, the legs a call dialled). For reconciliation.
        https://www.twilio.com/docs/voice/api/call-resource#read-multiple-call-resources
        """
        filters = {"to": to, "from_": from_, "parent_call_sid": parent_sid}
        kwargs: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
        instances = await self._do(
            lambda c: c.calls.list_async(limit=limit, page_size=page_size, **kwargs)
        )
        return [_call(instance) for instance in instances]

    async def start_call(
        self,
        *,
        from_: str,
        to: str,
        url: str,
        status_callback: str | None = None,
        status_callback_events: Sequence[str] = (),
    ) -> CallRecord:
        """Create a Call (click-to-call); Twilio fetches TwiML from ``url`` when answered.

        https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource
        """
        kwargs: dict[str, Any] = {"to": to, "from_": from_, "url": url}
        if status_callback:
            kwargs["status_callback"] = status_callback
        if status_callback_events:
            kwargs["status_callback_event"] = list(status_callback_events)
        instance = await self._do(lambda c: c.calls.create_async(**kwargs))
        _log.info("twilio call created sid=%s status=%s", instance.sid, instance.status)
        return _call(instance)

    async def fetch_call(self, sid: str) -> CallRecord:
        """Fetch one Call by its sid.

        https://www.twilio.com/docs/voice/api/call-resource#fetch-a-call-resource
        """
        instance = await self._do(lambda c: c.calls(sid).fetch_async())
        return _call(instance)

    async def delete_recording(self, recording_sid: str) -> None:
        """Delete a call Recording and its media at Twilio (204).

        Idempotent: a recording Twilio does not know (404, already deleted) counts as
        deleted. Any other refusal or no answer raises :class:`ApiError`.
        https://www.twilio.com/docs/voice/api/recording#delete-a-recording-resource
        """
        try:
            await self._do(lambda c: c.recordings(recording_sid).delete_async())
        except ApiError as exc:
            if exc.http_status != 404:
                raise
            _log.info("twilio recording %s was already deleted", recording_sid)
            return
        _log.info("twilio recording deleted sid=%s", recording_sid)
