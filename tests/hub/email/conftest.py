"""The hub's email path against real peers: Dovecot (IMAP) and aiosmtpd (SMTP).

``start_mail_hub`` builds, per test, the real app (``create_app(..., run_workers=False)``,
its lifespan running, so migrations are applied) on ``database_url`` (once on SQLite and
once on PostgreSQL), with the IMAP settings of a Dovecot account of the test's own and the
SMTP settings of an aiosmtpd started for the test (STARTTLS required, AUTH required, by
default). The agent API is reached through ``httpx.ASGITransport`` with an agent's token
made by ``hub.auth.add_agent``. Nothing of ours is mocked: tests drive the IMAP sync
(``MailHub.sync()``, ``MailHub.ingest()``) and the SMTP sender (``MailHub.sender()``) as
the workers would, one explicit round at a time, and look at what the peers saw.

``database_url`` is redefined here with the meaning of ``tests/conftest.py``'s (an
empty database, once per database) but, on PostgreSQL, on the session database of
``tests/hub/conftest.py`` (``api_database``), emptied before each test (10 ms) instead of
a CREATE DATABASE plus migrations per test (1.7 s), to keep the suite quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from channels.email.imap import ImapConfig
from channels.email.mailsync import SyncResult
from channels.email.smtp import SmtpConfig
from config import Settings
from hub.app import create_app
from hub.auth import add_agent
from hub.email_ingest import MailIngest
from hub.email_sender import EmailSender
from hub.services import Services
from tests.peers.dovecot import DovecotPeer, dovecot, dovecot_server  # noqa: F401
from tests.peers.smtp import SmtpPeer, StartSmtp, smtp_cert, smtp_server  # noqa: F401
from timeline.db import Database
from timeline.schema import bounces, events, outbox

FIXTURES = Path(__file__).resolve().parents[3] / "channels" / "email" / "fixtures"
OUR_ADDRESS = "support@commhub.example"
SECRET_KEY = "x" * 40
BASE_URL = "http://hub.test"


def fixture_bytes(name: str) -> bytes:
    """The raw bytes of one message of the channel's corpus."""
    return (FIXTURES / name).read_bytes()


def mail(
    *,
    frm: str,
    subject: str,
    message_id: str | None,
    to: str = OUR_ADDRESS,
    body: str = "Hello",
    date: datetime | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A small text/plain message as a mail program would deliver it."""
    lines = [f"From: {frm}", f"To: {to}", f"Subject: {subject}"]
    lines.append(f"Date: {email.utils.format_datetime(date or datetime.now(UTC))}")
    if message_id is not None:
        lines.append(f"Message-ID: {message_id}")
    if in_reply_to:
        lines.append(f"In-Reply-To: {in_reply_to}")
    if references:
        lines.append("References: " + " ".join(references))
    lines += [f"{k}: {v}" for k, v in headers]
    lines += ["MIME-Version: 1.0", 'Content-Type: text/plain; charset="utf-8"']
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


def dsn(
    *,
    original_id: str,
    recipient: str,
    status: str,
    message_id: str,
    sender: str = OUR_ADDRESS,
) -> bytes:
    """A delivery status notification (RFC 3464) as Postfix sends it for our message."""
    hard = status.startswith("5")
    action = "failed" if hard else "delayed"
    code = "550" if hard else "452"
    boundary = "dsn-boundary-42"
    return (
        "Return-Path: <>\r\n"
        "From: MAILER-DAEMON@mx.commhub.example (Mail Delivery System)\r\n"
        f"To: {sender}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {email.utils.format_datetime(datetime.now(UTC))}\r\n"
        f"Message-ID: {message_id}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "Your message could not be delivered to one or more recipients.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.commhub.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; {code} {status} <{recipient}>: no luck\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"From: {sender}\r\n"
        f"To: {recipient}\r\n"
        "Subject: Your appointment\r\n"
        f"Message-ID: {original_id}\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode()


@pytest.fixture
def database_url(api_database_url: str) -> str:
    """An empty, migrated database: SQLite and PostgreSQL (``tests/hub/conftest.py``)."""
    return api_database_url


@dataclasses.dataclass
class MailHub:
    """A running hub with the email channel on, its peers, and helpers for tests."""

    app: Starlette
    settings: Settings
    dovecot: DovecotPeer
    smtp: SmtpPeer
    api: httpx.AsyncClient
    token: str

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    @property
    def db(self) -> Database:
        return self.services.db

    def imap_config(self) -> ImapConfig:
        return dataclasses.replace(ImapConfig.from_settings(self.settings), timeout=10.0)

    def smtp_config(self) -> SmtpConfig:
        config = SmtpConfig.from_settings(self.settings, tls_context=self.smtp.client_tls_context)
        return dataclasses.replace(config, timeout=10.0)

    def ingest(self, **options: Any) -> MailIngest:
        return MailIngest(self.services, **options)

    def sender(self) -> EmailSender:
        return EmailSender(self.services, self.smtp_config())

    async def sync(self, ingest: MailIngest | None = None) -> list[SyncResult]:
        """One ``MailIngest.sync_once`` of every folder."""
        return await (ingest or self.ingest()).sync_once(self.imap_config())

    # -- the agent API ------------------------------------------------------------------

    async def customer_for(self, address: str) -> str:
        response = await self.api.get("/api/v1/customers", params={"email": address})
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert len(items) == 1, f"no customer with {address}: {items}"
        customer_id: str = items[0]["id"]
        return customer_id

    async def create_customer(self, address: str, name: str = "Customer") -> str:
        response = await self.api.post(
            "/api/v1/customers", json={"name": name, "emails": [address]}
        )
        assert response.status_code == 201, response.text
        customer_id: str = response.json()["id"]
        return customer_id

    async def timeline(self, customer_id: str) -> list[dict[str, Any]]:
        response = await self.api.get(
            f"/api/v1/customers/{customer_id}/timeline", params={"limit": 200}
        )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def send(self, customer_id: str, **body: Any) -> httpx.Response:
        payload = {"customer_id": customer_id, "channel": "email", "text": "Hello", **body}
        return await self.api.post("/api/v1/messages", json=payload)

    async def upload(self, customer_id: str, name: str, content: bytes, ctype: str) -> str:
        response = await self.api.post(
            f"/api/v1/customers/{customer_id}/documents",
            files={"file": (name, content, ctype)},
        )
        assert response.status_code == 201, response.text
        document_id: str = response.json()["document"]["id"]
        return document_id

    # -- straight from the database -----------------------------------------------------

    async def email_events(self) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                sa.select(events).where(events.c.channel == "email").order_by(events.c.id)
            )
            return [dict(r) for r in rows.mappings()]

    async def event(self, external_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                sa.select(events).where(
                    events.c.channel == "email", events.c.external_id == external_id
                )
            )
            found = [dict(r) for r in rows.mappings()]
        assert len(found) == 1, f"{len(found)} events with {external_id}"
        return found[0]

    async def outbox_rows(self, event_id: str) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = await conn.execute(sa.select(outbox).where(outbox.c.event_id == event_id))
            return [dict(r) for r in rows.mappings()]

    async def bounce(self, address: str) -> dict[str, Any] | None:
        async with self.db.read() as conn:
            row = (
                (await conn.execute(sa.select(bounces).where(bounces.c.address == address)))
                .mappings()
                .one_or_none()
            )
        return None if row is None else dict(row)


StartMailHub = Callable[..., contextlib.AbstractAsyncContextManager[MailHub]]


@pytest.fixture
def start_mail_hub(
    database_url: str,
    tmp_path: Path,
    dovecot: DovecotPeer,  # noqa: F811
    smtp_server: StartSmtp,  # noqa: F811
) -> StartMailHub:
    """``async with start_mail_hub(security=..., auth=..., **settings) as hub:``."""

    @contextlib.asynccontextmanager
    async def start(
        *, security: str = "starttls", auth: bool = True, run_workers: bool = False, **extra: Any
    ) -> AsyncIterator[MailHub]:
        smtp = smtp_server(security=security, auth=auth)
        data_dir = tmp_path / "files"
        data_dir.mkdir(exist_ok=True)
        settings = Settings(
            database_url=database_url,
            data_dir=str(data_dir),
            secret_key=SECRET_KEY,
            public_url=BASE_URL,
            imap_host=dovecot.host,
            imap_port=dovecot.port,
            imap_username=dovecot.user,
            imap_password=dovecot.password,
            imap_security="none",
            smtp_host=smtp.host,
            smtp_port=smtp.port,
            smtp_security=security,
            smtp_username=smtp.username,
            smtp_password=smtp.password,
            smtp_from=OUR_ADDRESS,
            **extra,
        )
        app = create_app(settings, run_workers=run_workers)
        async with app.router.lifespan_context(app):
            async with app.state.services.db.write() as conn:
                _, token = await add_agent(conn, email="agent@hub.example", role="agent")
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url=BASE_URL,
                headers={"Authorization": f"Bearer {token}"},
            ) as api:
                yield MailHub(app, settings, dovecot, smtp, api, token)

    return start


@pytest.fixture
async def mail_hub(start_mail_hub: StartMailHub) -> AsyncIterator[MailHub]:
    """A hub with IMAP (Dovecot) and SMTP (aiosmtpd, STARTTLS + AUTH) configured."""
    async with start_mail_hub() as running:
        yield running


async def wait_for(
    check: Callable[[], Any], *, within: float = 10.0, interval: float = 0.05
) -> Any:
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
