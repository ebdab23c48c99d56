"""The hub's SMS path against the Twilio sandbox, both served on loopback.

``start_hub`` starts, per test, the built-in Twilio sandbox (``run_sandbox``) and the
real hub app (``create_app(..., run_workers=False)``, served by uvicorn through
``channels.twilio.sandbox.serve``) on the ``database_url`` of ``tests/conftest.py`` (so
storage-touching tests run on SQLite and on PostgreSQL). The sandbox needs the hub's URL
for its webhooks and callbacks and the hub needs the sandbox's URL in its settings, so
the hub's port is picked first and the sandbox is started before the hub.

``database_url`` is ``tests/hub/conftest.py``'s ``api_database_url`` (an empty
database, once on SQLite and once on PostgreSQL): on PostgreSQL one database per
session, migrated once and emptied before each test (a few ms) instead of a CREATE
DATABASE + DROP per test (1.3 s); the hub's lifespan still runs the migrations, which
find nothing to do.

The hub's own code talks to the sandbox through the real twilio SDK; nothing is mocked.
Tests drive the sender and the reconciler themselves (``SmsHub.sender()``,
``SmsHub.reconciler()``), so every round is explicit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from channels.twilio.forms import encode_form
from channels.twilio.sandbox import Sandbox, run_sandbox, serve
from channels.twilio.signature import SIGNATURE_HEADER, public_url_for, sign
from config import Settings
from hub.app import create_app
from hub.auth import add_agent
from hub.services import Services
from hub.sms_reconcile import Reconciler
from hub.sms_sender import SmsSender
from timeline.db import Database
from timeline.schema import events
from timeline.schema import outbox as outbox_table

ACCOUNT_SID = "AC" + "5f3c9a0e1b2d4c6f" * 2
AUTH_TOKEN = "9c1f0e2d3b4a59687766554433221100"
OUR_NUMBER = "+14155550199"
OTHER_NUMBER = "+14155550198"
CUSTOMER = "+14155550100"
SECRET_KEY = "x" * 40
SMS_PATH = "/webhooks/twilio/sms"
STATUS_PATH = "/webhooks/twilio/sms/status"
FORM = "application/x-www-form-urlencoded"


def free_port() -> int:
    """A loopback port that was free a moment ago (the hub binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def inbound_form(sid: str, from_: str, to: str, body: str, **extra: str) -> list[tuple[str, str]]:
    """An inbound-SMS form with the fields Twilio sends."""
    params = [
        ("ToCountry", "US"),
        ("SmsMessageSid", sid),
        ("NumMedia", "0"),
        ("SmsSid", sid),
        ("SmsStatus", "received"),
        ("Body", body),
        ("FromCountry", "US"),
        ("To", to),
        ("NumSegments", "1"),
        ("MessageSid", sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", from_),
        ("ApiVersion", "2010-04-01"),
    ]
    for key, value in extra.items():
        params = [(k, v) for k, v in params if k != key] + [(key, value)]
    return params


def status_form(
    sid: str,
    status: str,
    *,
    to: str = CUSTOMER,
    from_: str = OUR_NUMBER,
    error_code: int | None = None,
) -> list[tuple[str, str]]:
    """A message status callback form, as Twilio sends it."""
    params = [
        ("SmsSid", sid),
        ("SmsStatus", status),
        ("MessageStatus", status),
        ("To", to),
        ("MessageSid", sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", from_),
        ("ApiVersion", "2010-04-01"),
    ]
    if error_code is not None:
        params.append(("ErrorCode", str(error_code)))
    return params


class CreateRecorder:
    """An ASGI wrapper in front of the sandbox noting when each Messages create arrives.

    Nothing is changed on the way: it only records ``time.monotonic()`` and the form's
    ``From`` of each ``POST .../Messages.json`` (for sliding-window rate checks that the
    sandbox's second-resolution ``date_created`` cannot give).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.creates: list[tuple[float, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].endswith("/Messages.json")
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        from urllib.parse import parse_qsl

        from_ = dict(parse_qsl(body.decode())).get("From", "")
        self.creates.append((time.monotonic(), from_))
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


@dataclasses.dataclass
class SmsHub:
    """A running hub with the SMS channel on, its sandbox, and helpers for tests."""

    app: Starlette
    settings: Settings
    sandbox: Sandbox
    url: str
    """Where the hub really listens (loopback)."""
    sandbox_url: str
    http: httpx.AsyncClient
    """A client of the hub that sends the agent's bearer token."""
    token: str
    recorder: CreateRecorder | None = None

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    @property
    def db(self) -> Database:
        return self.services.db

    def sender(self, **options: Any) -> SmsSender:
        assert self.services.twilio is not None
        return SmsSender(self.services, self.services.twilio, **options)

    def reconciler(self) -> Reconciler:
        assert self.services.twilio is not None
        return Reconciler(self.services, self.services.twilio)

    # -- webhooks -----------------------------------------------------------------------

    async def post_signed(
        self,
        path: str,
        params: Sequence[tuple[str, str]],
        *,
        query: str = "",
        sign_base: str | None = None,
        token: str | None = None,
        signature: str | None = "sign",
        content_type: str = FORM,
        send_params: Sequence[tuple[str, str]] | None = None,
    ) -> httpx.Response:
        """POST a form to the hub, signed as Twilio would sign it for ``sign_base``.

        ``sign_base`` defaults to ``HUB_PUBLIC_URL``; ``send_params`` (default ``params``)
        is what is actually sent, so a tampered form can be signed for another one;
        ``signature=None`` sends no header.
        """
        url = public_url_for(sign_base or self.settings.public_url, path, query)
        headers = {"Content-Type": content_type}
        if signature == "sign":
            headers[SIGNATURE_HEADER] = sign(
                token or self.settings.twilio_auth_token or "", url, params
            )
        elif signature is not None:
            headers[SIGNATURE_HEADER] = signature
        target = f"{path}?{query}" if query else path
        content = encode_form(list(send_params if send_params is not None else params))
        return await self.http.post(target, content=content, headers=headers)

    async def inbound(
        self, sid: str, body: str, *, from_: str = CUSTOMER, to: str = OUR_NUMBER
    ) -> httpx.Response:
        """A signed inbound-SMS webhook."""
        return await self.post_signed(SMS_PATH, inbound_form(sid, from_, to, body))

    async def status(
        self,
        sid: str,
        status: str,
        *,
        event_id: str | None = None,
        error_code: int | None = None,
        to: str = CUSTOMER,
        from_: str = OUR_NUMBER,
    ) -> httpx.Response:
        """A signed status callback, to the URL the sender gives Twilio when ``event_id``."""
        query = f"event={event_id}" if event_id else ""
        params = status_form(sid, status, to=to, from_=from_, error_code=error_code)
        return await self.post_signed(STATUS_PATH, params, query=query)

    # -- the agent API --------------------------------------------------------------------

    async def create_customer(self, phones: Sequence[str] = (CUSTOMER,), name: str = "Ada") -> str:
        response = await self.http.post(
            "/api/v1/customers", json={"name": name, "phones": list(phones)}
        )
        assert response.status_code == 201, response.text
        customer_id: str = response.json()["id"]
        return customer_id

    async def customer_for(self, phone: str) -> str:
        response = await self.http.get("/api/v1/customers", params={"phone": phone})
        assert response.status_code == 200, response.text
        (item,) = response.json()["items"]
        customer_id: str = item["id"]
        return customer_id

    async def send(
        self, customer_id: str, text: str, *, key: str | None = None, **more: Any
    ) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return await self.http.post(
            "/api/v1/messages",
            json={"customer_id": customer_id, "channel": "sms", "text": text, **more},
            headers=headers,
        )

    async def timeline(self, customer_id: str, channel: str = "sms") -> list[dict[str, Any]]:
        response = await self.http.get(
            f"/api/v1/customers/{customer_id}/timeline", params={"channel": channel, "limit": 200}
        )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    # -- straight from the database -------------------------------------------------------

    async def count(self, table: sa.Table, *where: Any) -> int:
        async with self.db.read() as conn:
            query = sa.select(sa.func.count()).select_from(table).where(*where)
            return int((await conn.execute(query)).scalar_one())

    async def event(self, event_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            row = (
                (await conn.execute(sa.select(events).where(events.c.id == event_id)))
                .mappings()
                .one()
            )
            return dict(row)

    async def event_by_sid(self, sid: str) -> dict[str, Any] | None:
        async with self.db.read() as conn:
            row = (
                (await conn.execute(sa.select(events).where(events.c.external_id == sid)))
                .mappings()
                .one_or_none()
            )
            return dict(row) if row is not None else None

    async def outbox_rows(self, event_id: str | None = None) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            query = sa.select(outbox_table).order_by(outbox_table.c.created_at, outbox_table.c.id)
            if event_id is not None:
                query = query.where(outbox_table.c.event_id == event_id)
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def drain(self, sender: SmsSender | None = None, rounds: int = 50) -> int:
        """Run the sender until it finds nothing due; returns rows handled."""
        sender = sender or self.sender()
        handled = 0
        for _ in range(rounds):
            n = await sender.run_once()
            if not n:
                return handled
            handled += n
        raise AssertionError("the sender never ran dry")

    def outbound_at_sandbox(self, to: str | None = None) -> list[dict[str, Any]]:
        """Messages the hub created at the sandbox (REST creates), oldest first."""
        return [
            m
            for m in self.sandbox.messages.values()
            if m["direction"] == "outbound-api" and (to is None or m["to"] == to)
        ]


@pytest.fixture
def database_url(api_database_url: str) -> str:
    """An empty, migrated database: SQLite and PostgreSQL (``tests/hub/conftest.py``)."""
    return api_database_url


StartHub = Callable[..., contextlib.AbstractAsyncContextManager[SmsHub]]


@pytest.fixture
def start_hub(database_url: str, tmp_path: Path) -> StartHub:
    """``async with start_hub(**options) as hub:`` a hub and its sandbox on loopback.

    Options: ``public_url`` (default: where the hub really listens), ``auth_token``,
    ``rate`` (TWILIO_SMS_RATE, default 0: no spacing), ``help_text``, ``record_creates``
    (put a :class:`CreateRecorder` in front of the sandbox) and any ``Sandbox`` keyword
    (``out_of_order``, ``drop_statuses``, ``callback_delay``...).
    """
    counter = 0

    @contextlib.asynccontextmanager
    async def start(
        *,
        public_url: str | None = None,
        auth_token: str = AUTH_TOKEN,
        rate: float = 0,
        help_text: str | None = None,
        record_creates: bool = False,
        **sandbox_options: Any,
    ) -> AsyncIterator[SmsHub]:
        nonlocal counter
        counter += 1
        port = free_port()
        hub_url = f"http://127.0.0.1:{port}"
        public = public_url or hub_url
        sandbox_options.setdefault("callback_delay", 0.01)
        sandbox = Sandbox(
            ACCOUNT_SID,
            auth_token,
            hub_url,
            signing_url=public,
            numbers=(OUR_NUMBER, OTHER_NUMBER),
            **sandbox_options,
        )
        recorder = CreateRecorder(sandbox.app) if record_creates else None
        data_dir = tmp_path / f"files{counter}"
        data_dir.mkdir()
        sandbox_server = serve(recorder) if recorder is not None else run_sandbox(sandbox)
        sandbox_url = await sandbox_server.__aenter__()
        hub_server: contextlib.AbstractAsyncContextManager[str] | None = None
        try:
            extra: dict[str, Any] = {}
            if help_text is not None:
                extra["twilio_help_text"] = help_text
            settings = Settings(
                database_url=database_url,
                data_dir=str(data_dir),
                secret_key=SECRET_KEY,
                public_url=public,
                twilio_account_sid=ACCOUNT_SID,
                twilio_auth_token=auth_token,
                twilio_numbers=(OUR_NUMBER, OTHER_NUMBER),
                twilio_api_base=sandbox_url,
                twilio_sms_rate=rate,
                **extra,
            )
            app = create_app(settings, run_workers=False)
            hub_server = serve(app, port=port)
            url = await hub_server.__aenter__()
            async with app.state.services.db.write() as conn:
                _, token = await add_agent(conn, email="agent@hub.example", role="agent")
            async with httpx.AsyncClient(
                base_url=url,
                timeout=15,
                headers={"Authorization": f"Bearer {token}"},
                limits=httpx.Limits(max_connections=400, max_keepalive_connections=400),
            ) as http:
                yield SmsHub(app, settings, sandbox, url, sandbox_url, http, token, recorder)
        finally:
            # Stop the sandbox's pending callbacks, then both servers at once (each
            # uvicorn shutdown takes a few 0.1 s ticks).
            await sandbox.aclose()
            servers = [s for s in (hub_server, sandbox_server) if s is not None]
            errors = await asyncio.gather(
                *(s.__aexit__(None, None, None) for s in servers), return_exceptions=True
            )
            await sandbox.aclose()
            for error in errors:
                if isinstance(error, BaseException):
                    raise error

    return start


@pytest.fixture
async def hub(start_hub: StartHub) -> AsyncIterator[SmsHub]:
    """A hub with default options (no rate limit, callbacks in order)."""
    async with start_hub() as running:
        yield running


async def wait_for(check: Callable[[], Any], *, within: float = 5.0, interval: float = 0.02) -> Any:
    """Poll an async or plain ``check`` until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {check}")
        await asyncio.sleep(interval)


def aware(value: datetime) -> datetime:
    """A datetime read back from either database, timezone-aware (UTC)."""
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)
