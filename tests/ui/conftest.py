"""Fixtures of the console's browser tests: a served hub, a seeded customer, Chromium.

The hub runs with uvicorn on loopback (``channels.twilio.sandbox.serve``) with its
workers, so the SMS sender really sends; a Twilio sandbox of the test's own (served on
loopback, ``TWILIO_API_BASE`` pointing at it) plays the phone network. Chromium is the
Debian package driven by Python Playwright; without ``/usr/bin/chromium`` (or the
``playwright`` package) the browser tests skip with the reason, and fail under CI=true.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from channels.twilio.sandbox import Sandbox, run_sandbox, serve
from hub.app import create_app
from hub.auth import add_agent
from tests.conftest import peer_missing
from tests.hub.conftest import hub_settings
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind, utcnow
from timeline.ingest import ingest_batch

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EMAIL = "ada@hub.example"
PASSWORD = "correct horse battery"
OUR_NUMBER = "+14155550199"
PHONE = "+14155550123"
ACCOUNT = "AC" + "1" * 32
TOKEN = "2" * 32
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass
class RunningHub:
    """A hub served on loopback, its sandbox and its seeded customer."""

    url: str
    app: Starlette
    sandbox: Sandbox
    customer_id: str


async def seed(app: Starlette, events: int = 70) -> str:
    """An agent with a password and a customer with a long SMS history; the customer's id."""
    services = app.state.services
    now = utcnow()
    phone = Identity(IdentityKind.PHONE, PHONE)
    ours = Identity(IdentityKind.PHONE, OUR_NUMBER)
    async with services.db.write() as conn:
        await add_agent(conn, email=EMAIL, role="supervisor", name="Ada", password=PASSWORD)
        batch = [
            Event(
                channel=Channel.SMS,
                kind=Kind.MESSAGE,
                direction=Direction.INBOUND if i % 2 else Direction.OUTBOUND,
                occurred_at=now - timedelta(hours=events - i),
                external_id=f"SM{i:032d}",
                status="received" if i % 2 else "delivered",
                text=f"Message number {i}",
                sender=phone if i % 2 else ours,
                recipient=ours if i % 2 else phone,
            )
            for i in range(events)
        ]
        result = await ingest_batch(conn, batch, region="US")
        first = result.outcomes[0].event
        assert first is not None
        from timeline import customers

        await customers.update(conn, first.customer_id, name="Grace Hopper")
        return first.customer_id


@pytest.fixture
def hub_factory(
    tmp_path: Path,
) -> Callable[..., contextlib.AbstractAsyncContextManager[RunningHub]]:
    """Start a hub (SQLite) and its sandbox; ``callback_delay`` paces the sandbox."""

    @contextlib.asynccontextmanager
    async def start(callback_delay: float = 0.05, **overrides: Any) -> AsyncIterator[RunningHub]:
        port, sandbox_port = free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        settings = hub_settings(
            f"sqlite+aiosqlite:///{tmp_path}/hub.db",
            tmp_path / "files",
            public_url=url,
            twilio_account_sid=ACCOUNT,
            twilio_auth_token=TOKEN,
            twilio_numbers=(OUR_NUMBER,),
            twilio_api_base=f"http://127.0.0.1:{sandbox_port}",
            twilio_sms_rate=20.0,
            **overrides,
        )
        sandbox = Sandbox(ACCOUNT, TOKEN, url, callback_delay=callback_delay)
        app = create_app(settings, run_workers=True, sse_heartbeat=1.0)
        async with run_sandbox(sandbox, "127.0.0.1", sandbox_port):
            async with serve(app, "127.0.0.1", port):
                customer_id = await seed(app)
                yield RunningHub(url, app, sandbox, customer_id)

    return start


@pytest.fixture
def chromium() -> str:
    """Where Chromium is; skips (fails under CI=true) without it or without playwright."""
    if not os.path.exists(CHROMIUM):
        peer_missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        peer_missing("the playwright package is not installed (pip install playwright)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    """Chromium (headless) through Playwright."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()
