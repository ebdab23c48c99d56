"""The hub's Voice path against the Twilio sandbox, both served on loopback.

``voice_hub`` starts, per test, the built-in Twilio sandbox (``run_sandbox``) and the real
hub app (``create_app(..., run_workers=False)`` served by uvicorn through
``channels.twilio.sandbox.serve``) on ``database_url``: once on SQLite and once on
PostgreSQL. ``database_url`` here is ``tests/hub/conftest.py``'s ``api_database_url``
(the same two databases as ``tests/conftest.py``'s, emptied instead of re-created on
PostgreSQL, which keeps these tests fast).

The hub's public URL is ``https://hub.example.com`` (as behind a proxy): the sandbox signs
for it and sends to the hub's loopback address. Tests post recorded fixtures signed at test
time (``VoiceHub.post``), drive calls through the sandbox (``sandbox.call_hub``), watch
the live stream over HTTP (``VoiceHub.stream``) and check API answers against the app's
own OpenAPI schema. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from channels.twilio.forms import decode_form, encode_form
from channels.twilio.sandbox import Sandbox, run_sandbox, serve
from channels.twilio.signature import SIGNATURE_HEADER, public_url_for, sign
from config import Settings
from hub.app import create_app
from tests.hub.conftest import OpenApiChecker, checking_hook, hub_settings, make_agents
from timeline.db import Database

FIXTURES = Path(__file__).parents[3] / "channels" / "twilio" / "fixtures"

ACCOUNT_SID = "AC3f1c2e8d9b7a4c6e5f0a1b2c3d4e5f6a"  # the fixtures' account
AUTH_TOKEN = "voice-test-token-not-a-secret"
PUBLIC_URL = "https://hub.example.com"
OUR_NUMBER = "+14155550199"
CUSTOMER = "+14155550100"
#: The fixtures' calls: the customer's call and the leg that rang client:alice.
PARENT_SID = "CA5d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a"
LEG_SID = "CA9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
RECORDING_SID = "RE1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"

VOICE = "/webhooks/twilio/voice"
STATUS = "/webhooks/twilio/voice/status"
RECORDING = "/webhooks/twilio/voice/recording"
DIAL = "/webhooks/twilio/voice/dial"


def fixture_form(name: str, **changes: str) -> list[tuple[str, str]]:
    """A recorded payload's pairs, with some fields replaced."""
    form = decode_form((FIXTURES / name).read_bytes())
    return [(key, changes.get(key, value)) for key, value in form]


async def sse_messages(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    """(event, parsed data) of each SSE message; comments are skipped."""
    event: str | None = None
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data and event is not None:
                yield event, json.loads("\n".join(data))
            event, data = None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


@dataclasses.dataclass
class VoiceHub:
    """A running hub, its sandbox, and clients."""

    app: Starlette
    settings: Settings
    sandbox: Sandbox
    url: str
    tokens: dict[str, str]
    api: httpx.AsyncClient
    """Talks to the hub with the agent's token; every answer checked against the schema."""
    raw: httpx.AsyncClient
    """Talks to the hub with no token and no schema check (webhooks)."""

    @property
    def db(self) -> Database:
        db: Database = self.app.state.services.db
        return db

    async def post(
        self,
        path: str,
        form: list[tuple[str, str]],
        *,
        query: str = "",
        token: str = AUTH_TOKEN,
    ) -> httpx.Response:
        """POST a form to a webhook as Twilio does, signed for the public URL."""
        signature = sign(token, public_url_for(PUBLIC_URL, path, query), form)
        return await self.raw.post(
            f"{path}?{query}" if query else path,
            content=encode_form(form),
            headers={
                SIGNATURE_HEADER: signature,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )

    @contextlib.asynccontextmanager
    async def stream(self) -> AsyncIterator[AsyncIterator[tuple[str, Any]]]:
        """The live stream as an agent's browser reads it, once it is connected."""
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            headers = {"Authorization": f"Bearer {self.tokens['agent']}"}
            async with client.stream("GET", "/api/v1/stream", headers=headers) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                assert await anext(lines) == ": connected"
                assert await anext(lines) == ""
                yield sse_messages(lines)

    async def count(self, table: sa.Table, *where: Any) -> int:
        async with self.db.read() as conn:
            query = sa.select(sa.func.count()).select_from(table).where(*where)
            return int((await conn.execute(query)).scalar_one())

    async def customer_with(self, *phones: str, name: str = "Ann") -> dict[str, Any]:
        response = await self.api.post("/api/v1/customers", json={"name": name, "phones": phones})
        assert response.status_code == 201, response.text
        customer: dict[str, Any] = response.json()
        return customer

    async def timeline(self, customer_id: str) -> list[dict[str, Any]]:
        response = await self.api.get(f"/api/v1/customers/{customer_id}/timeline")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items


def voice_settings(database_url: str, data_dir: Path, api_base: str, **overrides: Any) -> Settings:
    """A hub with Twilio Voice on: two browser clients ring, calls are recorded."""
    values: dict[str, Any] = {
        "public_url": PUBLIC_URL,
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_numbers": (OUR_NUMBER,),
        "twilio_api_base": api_base,
        "twilio_voice_clients": ("alice", "bob"),
        "twilio_voice_record": True,
        "twilio_voice_timeout": 15,
    }
    values.update(overrides)
    return hub_settings(database_url, data_dir, **values)


#: The app's schema does not depend on the settings: one checker for the session.
_CHECKERS: list[OpenApiChecker] = []

StartHub = Callable[..., contextlib.AbstractAsyncContextManager[VoiceHub]]


@pytest.fixture
def database_url(api_database_url: str) -> str:
    """An empty, migrated database: SQLite and PostgreSQL (see the module docstring)."""
    return api_database_url


@pytest.fixture
def start_hub(database_url: str, tmp_path: Path) -> StartHub:
    """``async with start_hub(**settings) as hub``: sandbox and hub on loopback."""

    started = itertools.count()

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[VoiceHub]:
        sandbox = Sandbox(
            ACCOUNT_SID,
            AUTH_TOKEN,
            "http://127.0.0.1:9",  # replaced by the hub's address once it listens
            signing_url=PUBLIC_URL,
            callback_delay=0.002,
            call_duration=61,
        )
        async with run_sandbox(sandbox) as api_base:
            data_dir = tmp_path / f"files-{next(started)}"
            settings = voice_settings(database_url, data_dir, api_base, **overrides)
            app = create_app(settings, run_workers=False, sse_heartbeat=0.5)
            async with serve(app) as url:
                sandbox.hub_url = url
                tokens = await make_agents(app.state.services.db)
                if not _CHECKERS:
                    async with httpx.AsyncClient(base_url=url, timeout=10) as plain:
                        doc = (await plain.get("/openapi.json")).json()
                    _CHECKERS.append(OpenApiChecker(doc))
                checker = _CHECKERS[0]
                async with (
                    httpx.AsyncClient(
                        base_url=url,
                        timeout=10,
                        headers={"Authorization": f"Bearer {tokens['agent']}"},
                        event_hooks={"response": [checking_hook(checker)]},
                    ) as api,
                    httpx.AsyncClient(base_url=url, timeout=10) as raw,
                ):
                    yield VoiceHub(app, settings, sandbox, url, tokens, api, raw)
                await sandbox.settle()

    return start


@pytest.fixture
async def hub(start_hub: StartHub) -> AsyncIterator[VoiceHub]:
    """A hub with the default voice settings of :func:`voice_settings`."""
    async with start_hub() as running:
        yield running
