"""RELIABILITY 35: Schemathesis over the hub's own OpenAPI schema, in process (ASGI).

Every operation gets a bounded, deterministic run (``max_examples=20``, derandomized;
Hypothesis phases explicit and generate, Schemathesis' examples among them) on a fresh
SQLite hub with an admin's token: no answer may be a 5xx, and every answer must conform
to its documented status codes, content types, headers and JSON schema.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from hub import openapi, twilio_webhooks, voice
from hub.app import ENDPOINTS, create_app
from hub.auth import add_agent
from tests.hub.conftest import hub_settings
from timeline.db import Database
from timeline.migrate import upgrade

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


async def _prepare(url: str) -> str:
    db = Database.from_url(url)
    try:
        await upgrade(db)
        async with db.write() as conn:
            _, token = await add_agent(conn, email="fuzz@hub.example", role="admin")
    finally:
        await db.dispose()
    return token


def _operations() -> list[str]:
    """Method and path of every operation of the schema (webhooks included)."""
    doc = openapi.build(
        ENDPOINTS,
        version="0",
        server_url="http://hub.test",
        webhooks=[
            (r.path, r.path)
            for r in [*twilio_webhooks.ROUTES, *voice.ROUTES]
            if isinstance(r, Route)
        ],
    )
    return [f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops]


@pytest.fixture
def hub_schema(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """The schema of a fresh SQLite hub (lifespan run by Schemathesis), an admin's token."""
    url = f"sqlite+aiosqlite:///{tmp_path}/hub.db"
    (tmp_path / "files").mkdir()
    token = asyncio.run(_prepare(url))
    app = create_app(hub_settings(url, tmp_path / "files"), run_workers=False, sse_heartbeat=0.05)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app), token
    finally:
        asgi.shutdown_lifespans()


@pytest.mark.slow
@pytest.mark.parametrize("operation", _operations())
def test_the_api_conforms_to_its_schema(hub_schema: tuple[Any, str], operation: str) -> None:
    schema, token = hub_schema
    method, path = operation.split(" ", 1)
    api_operation = schema[path][method]
    headers = {"Authorization": f"Bearer {token}"}
    statuses: set[int] = set()

    @settings(
        max_examples=20,
        derandomize=True,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=api_operation.as_strategy())
    def check(case: Any) -> None:
        # The live stream never ends: read it for a moment (its heartbeats), then stop.
        extra = {"timeout": 0.3} if path == "/api/v1/stream" else {}
        response = case.call_and_validate(headers=headers, checks=CHECKS, **extra)
        statuses.add(response.status_code)

    check()
    assert statuses
    if path.startswith("/api/"):
        # The admin's token worked: the examples reached the handlers.
        assert 401 not in statuses and 403 not in statuses, statuses
