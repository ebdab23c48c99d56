"""Fixtures of the media fetcher's tests: the real hub and the Twilio sandbox on loopback.

``mms_hub`` serves ``create_app(settings)`` (lifespan and migrations included, workers
off: the tests run the job themselves) with uvicorn on a loopback port, on
``database_url`` (SQLite and PostgreSQL), and the sandbox on another, as
``TWILIO_API_BASE``. The sandbox signs its webhooks for ``HUB_PUBLIC_URL``
(``http://hub.test``) and posts them to the served hub, as behind a proxy. Both the
sandbox and the ``foreign`` media host are wrapped in :func:`recording`, which keeps the
path and ``Authorization`` header of every request: the tests read what was sent where.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from channels.twilio.sandbox import MediaFile, Sandbox, TextResult, serve
from config import Settings
from hub.app import create_app
from hub.auth import add_agent
from hub.services import Services
from timeline.schema import documents, events

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "media-test-token-not-a-secret"
OUR_NUMBER = "+14155550199"
CUSTOMER = "+14155550100"
PUBLIC_URL = "http://hub.test"
BASIC = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request a recorded server received."""

    path: str
    authorization: str | None


def recording(app: ASGIApp, seen: list[Seen]) -> ASGIApp:
    """``app``, noting the path and Authorization header of each HTTP request."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization")
            seen.append(Seen(scope["path"], auth.decode() if auth is not None else None))
        await app(scope, receive, send)

    return wrapped


@dataclasses.dataclass
class Foreign:
    """A media host that is not Twilio: files, redirects and a streamed file (no length)."""

    url: str = ""
    files: dict[str, tuple[bytes, str]] = dataclasses.field(default_factory=dict)
    redirects: dict[str, str] = dataclasses.field(default_factory=dict)
    streamed: dict[str, bytes] = dataclasses.field(default_factory=dict)
    seen: list[Seen] = dataclasses.field(default_factory=list)

    def app(self) -> ASGIApp:
        async def get(request: Request) -> Response:
            path = request.url.path
            if path in self.redirects:
                return RedirectResponse(self.redirects[path], status_code=302)
            if path in self.streamed:
                content = self.streamed[path]

                async def chunks() -> AsyncIterator[bytes]:
                    for start in range(0, len(content), 64 * 1024):
                        yield content[start : start + 64 * 1024]

                return StreamingResponse(chunks(), media_type="application/octet-stream")
            if path in self.files:
                content, media_type = self.files[path]
                return Response(content, media_type=media_type)
            return Response("not found", status_code=404)

        return recording(Starlette(routes=[Route("/{path:path}", get)]), self.seen)

    def at(self, path: str) -> list[Seen]:
        """The requests for ``path``."""
        return [s for s in self.seen if s.path == path]


@dataclasses.dataclass
class MmsHub:
    """The served hub, the sandbox, and what the tests need to talk to them."""

    sandbox: Sandbox
    sandbox_url: str
    sandbox_seen: list[Seen]
    hub_url: str
    services: Services
    api: httpx.AsyncClient
    """The hub's API with an agent's bearer token."""
    data_dir: Path

    async def text(
        self, *media: MediaFile, urls: tuple[str, ...] = (), body: str = ""
    ) -> TextResult:
        """The customer texts our number an MMS; the hub must answer 200."""
        result = await self.sandbox.text_hub(CUSTOMER, OUR_NUMBER, body, urls, media=media)
        assert result.status_code == 200, result.response_text
        return result

    async def event(self, sid: str) -> dict[str, Any]:
        """The stored event of a message, by its MessageSid."""
        async with self.services.db.read() as conn:
            row = (
                (await conn.execute(sa.select(events).where(events.c.external_id == sid)))
                .mappings()
                .one()
            )
        return dict(row)

    async def documents(self, event_id: str) -> list[dict[str, Any]]:
        """The event's documents, in the order of its attachments."""
        async with self.services.db.read() as conn:
            rows = await conn.execute(
                sa.select(documents)
                .where(documents.c.event_id == event_id)
                .order_by(documents.c.created_at, documents.c.id)
            )
            found = {r["id"]: dict(r) for r in rows.mappings()}
        event = await self._event_by_id(event_id)
        return [found[a["id"]] for a in event["attachments"]]

    async def _event_by_id(self, event_id: str) -> dict[str, Any]:
        async with self.services.db.read() as conn:
            row = (
                (await conn.execute(sa.select(events).where(events.c.id == event_id)))
                .mappings()
                .one()
            )
        return dict(row)

    def media_requests(self) -> list[Seen]:
        """The sandbox's requests for media content (not the webhook, not JSON)."""
        return [
            s for s in self.sandbox_seen if "/Media/" in s.path and not s.path.endswith(".json")
        ]

    def stored_files(self) -> list[Path]:
        """Every file under the data folder (temporary ones included)."""
        return sorted(p for p in self.data_dir.rglob("*") if p.is_file())


def hub_settings(database_url: str, data_dir: Path, api_base: str) -> Settings:
    """A hub with the Twilio channel on, its API at ``api_base``."""
    return Settings(
        database_url=database_url,
        data_dir=str(data_dir),
        secret_key="x" * 40,
        public_url=PUBLIC_URL,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_numbers=(OUR_NUMBER,),
        twilio_api_base=api_base,
    )


@pytest.fixture
async def mms_hub(database_url: str, tmp_path: Path) -> AsyncIterator[MmsHub]:
    """The real hub and the sandbox, each on a loopback port, once per database."""
    data_dir = tmp_path / "files"
    data_dir.mkdir()
    seen: list[Seen] = []
    # The hub's URL is known only once it is served; the sandbox learns it below.
    sandbox = Sandbox(ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, callback_delay=0.01)
    try:
        async with serve(recording(sandbox.app, seen)) as sandbox_url:
            sandbox.base_url = sandbox_url
            app = create_app(hub_settings(database_url, data_dir, sandbox_url), run_workers=False)
            async with serve(app) as hub_url:
                sandbox.hub_url = hub_url
                services: Services = app.state.services
                async with services.db.write() as conn:
                    _, token = await add_agent(conn, email="agent@hub.example", role="agent")
                headers = {"Authorization": f"Bearer {token}"}
                async with httpx.AsyncClient(base_url=hub_url, headers=headers) as api:
                    yield MmsHub(sandbox, sandbox_url, seen, hub_url, services, api, data_dir)
    finally:
        await sandbox.aclose()


@pytest.fixture
async def foreign() -> AsyncIterator[Foreign]:
    """A media host on another loopback port: not Twilio's origin."""
    host = Foreign()
    async with serve(host.app()) as url:
        host.url = url
        yield host


@pytest.fixture
async def cdn(mms_hub: MmsHub) -> AsyncIterator[list[Seen]]:
    """The sandbox served a second time, as its CDN: media GETs redirect there."""
    seen: list[Seen] = []
    async with serve(recording(mms_hub.sandbox.app, seen)) as url:
        mms_hub.sandbox.media_redirect = url
        yield seen
        mms_hub.sandbox.media_redirect = None


@pytest.fixture
def free_port() -> Iterator[int]:
    """A loopback port nothing listens on (yet)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port
