"""Fixtures of the API tests: the real app on SQLite and PostgreSQL, agents of every role,
and clients whose every answer is checked against the app's own ``/openapi.json``.

Nothing of ours is mocked: ``hub`` builds ``create_app(settings, run_workers=False)`` on
``api_database_url`` (so each test runs once on SQLite and once on PostgreSQL), runs its
lifespan, adds an agent, a supervisor and an admin with ``hub.auth.add_agent`` and talks
to it through ``httpx.ASGITransport``.

``api_database_url`` is ``tests/conftest.py``'s ``database_url`` made affordable for
dozens of API tests: SQLite is a fresh file per test, as there; PostgreSQL is one
database per session (made and dropped with the same helpers, skipping or failing the same
way without the server), migrated once and emptied before each test. A ``CREATE
DATABASE`` plus migrations costs about 1.3 s on the test server, an emptying 10 ms; the
app's lifespan still runs the migrations (a no-op check) on every start.

The schema check (:class:`OpenApiChecker`) is an httpx response hook: it finds the
operation by method and path template, the response by status code, and validates a JSON
body with ``jsonschema`` against the documented schema (components resolved). A status
code the operation does not document, or a JSON body the schema does not describe, makes
the request raise :class:`SchemaViolation`, so the test fails where it happened. A path
no operation matches must be a 404, a method the path lacks a 405, both in the documented
``Error`` shape. ``raise_app_exceptions=False`` lets an unhandled error arrive as the 500
the app really sends, which the check then refuses as undocumented.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import asyncpg
import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
import uvicorn
from starlette.applications import Starlette

from config import Settings
from hub.app import create_app
from hub.auth import add_agent
from tests.conftest import PG_DSN, _drop_pg_database, _make_pg_database, pg_url
from timeline.db import Database
from timeline.migrate import upgrade
from timeline.schema import metadata

MAX_UPLOAD = 64 * 1024
SECRET_KEY = "x" * 40
BASE_URL = "http://hub.test"
ROLES = ("agent", "supervisor", "admin")
#: Routes that are not API operations: the index and the schema itself.
UNDOCUMENTED_PATHS = frozenset({"/", "/openapi.json"})
_PARAM = re.compile(r"\{([^}/]+)\}")


class SchemaViolation(AssertionError):
    """An answer the app's OpenAPI schema does not describe."""


@dataclasses.dataclass(frozen=True)
class _Template:
    path: str
    regex: re.Pattern[str]
    operations: dict[str, Any]

    @property
    def params(self) -> int:
        return len(_PARAM.findall(self.path))


class OpenApiChecker:
    """Validates answers against an OpenAPI 3.1 document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        templates = [_Template(path, _path_regex(path), ops) for path, ops in doc["paths"].items()]
        # A literal segment wins over a parameter (/calls/active before /calls/{id}).
        self.templates = sorted(templates, key=lambda t: t.params)
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def template_for(self, path: str) -> _Template | None:
        """The path template that matches a concrete path."""
        for template in self.templates:
            if template.regex.match(path):
                return template
        return None

    def validator(self, schema: dict[str, Any]) -> jsonschema.protocols.Validator:
        """A 2020-12 validator for ``schema`` that resolves ``#/components/...``."""
        key = json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            root = {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": self.doc.get("components", {}),
                "allOf": [schema],
            }
            cls = jsonschema.validators.validator_for(root)
            cls.check_schema(root)
            self._validators[key] = cls(root)
        return self._validators[key]

    def error_schema(self) -> dict[str, Any]:
        """The documented error body (for answers of no operation: 404, 405)."""
        return {"$ref": "#/components/schemas/Error"}

    def check(
        self, method: str, path: str, status: int, content_type: str, body: bytes | None
    ) -> None:
        """Raise SchemaViolation unless the schema documents this answer."""
        method = method.lower()
        media = content_type.split(";", 1)[0].strip().lower()
        template = self.template_for(path)
        where = f"{method.upper()} {path}"
        if template is None:
            if status != 404:
                raise SchemaViolation(f"{where}: no such path in the schema, answered {status}")
            self._check_json(where, media, body, self.error_schema())
            return
        where = f"{method.upper()} {template.path} ({path})"
        operation = template.operations.get(method)
        if operation is None:
            if status != 405:
                raise SchemaViolation(f"{where}: no such operation, answered {status}")
            self._check_json(where, media, body, self.error_schema())
            return
        responses = operation.get("responses", {})
        answer = (
            responses.get(str(status))
            or responses.get(f"{status // 100}XX")
            or responses.get("default")
        )
        if answer is None:
            raise SchemaViolation(
                f"{where} answered {status}, which the schema does not document "
                f"(documented: {', '.join(sorted(responses))}); body: {_excerpt(body)}"
            )
        content: dict[str, Any] = answer.get("content", {})
        if not content:
            if body:
                raise SchemaViolation(
                    f"{where} {status}: documented without a body, answered {_excerpt(body)}"
                )
            return
        if _is_json(media):
            json_media = next((m for m in content if _is_json(m)), None)
            if json_media is None:
                raise SchemaViolation(
                    f"{where} {status}: answered JSON, documented {', '.join(content)}"
                )
            self._check_json(where + f" {status}", media, body, content[json_media]["schema"])
            return
        if not any(not _is_json(m) for m in content):
            raise SchemaViolation(
                f"{where} {status}: answered {media or 'no content type'}, "
                f"documented only {', '.join(content)}"
            )

    def _check_json(
        self, where: str, media: str, body: bytes | None, schema: dict[str, Any]
    ) -> None:
        if not _is_json(media):
            raise SchemaViolation(f"{where}: expected a JSON answer, got {media or 'none'}")
        if body is None:
            return
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise SchemaViolation(f"{where}: invalid JSON ({exc}): {_excerpt(body)}") from None
        error = jsonschema.exceptions.best_match(self.validator(schema).iter_errors(data))
        if error is not None:
            at = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise SchemaViolation(
                f"{where}: the body does not match its schema at {at}: {error.message}; "
                f"body: {_excerpt(body)}"
            )


def _path_regex(template: str) -> re.Pattern[str]:
    """``/a/{id}/b`` -> ``^/a/[^/]+/b$``."""
    parts = _PARAM.split(template)
    # split() alternates literal text and parameter names.
    pattern = "".join(re.escape(p) if i % 2 == 0 else "[^/]+" for i, p in enumerate(parts))
    return re.compile(f"^{pattern}$")


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def _excerpt(body: bytes | None, size: int = 400) -> str:
    if not body:
        return "(empty)"
    text = body.decode("utf-8", "replace")
    return text if len(text) <= size else text[:size] + "..."


def checking_hook(checker: OpenApiChecker) -> Any:
    """An httpx response hook that checks every answer against the schema."""

    async def hook(response: httpx.Response) -> None:
        request = response.request
        if request.url.path in UNDOCUMENTED_PATHS or request.method == "HEAD":
            return
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            # An endless stream: check status and media type, never wait for the body.
            checker.check(
                request.method, request.url.path, response.status_code, content_type, None
            )
            return
        await response.aread()
        checker.check(
            request.method,
            request.url.path,
            response.status_code,
            content_type,
            response.content,
        )

    return hook


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The contract's error body with ``status``; returns ``error``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def hub_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings of a test hub (small upload limit, fixed secret)."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": str(data_dir),
        "secret_key": SECRET_KEY,
        "max_upload_bytes": MAX_UPLOAD,
        "public_url": BASE_URL,
    }
    values.update(overrides)
    return Settings(**values)


async def make_agents(db: Database) -> dict[str, str]:
    """An agent of each role; role -> API token."""
    tokens: dict[str, str] = {}
    async with db.write() as conn:
        for role in ROLES:
            _, tokens[role] = await add_agent(
                conn, email=f"{role}@hub.example", role=role, name=f"The {role}"
            )
    return tokens


async def fetch_schema(app: Starlette) -> dict[str, Any]:
    """The app's own /openapi.json (fetched without the checking hook)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as plain:
        response = await plain.get("/openapi.json")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


_CHECKERS: dict[str, OpenApiChecker] = {}


async def schema_checker(app: Starlette) -> OpenApiChecker:
    """The checker of the app's /openapi.json, fetched once per process.

    The document is a pure function of the code and ``public_url`` (the same for every
    test hub), and generating it costs ~0.15 s of pydantic work: every app of a session
    would serve the same bytes, so the first app's is reused (compiled validators too).
    """
    key = app.state.settings.public_url
    if key not in _CHECKERS:
        _CHECKERS[key] = OpenApiChecker(await fetch_schema(app))
    return _CHECKERS[key]


@dataclasses.dataclass
class Hub:
    """A running hub and what tests need to talk to it."""

    app: Starlette
    settings: Settings
    data_dir: Path
    tokens: dict[str, str]
    schema: dict[str, Any]
    checker: OpenApiChecker
    api: httpx.AsyncClient
    """Sends the ``agent`` role's token unless a request gives its own."""
    anon: httpx.AsyncClient
    """Sends no token."""

    @property
    def db(self) -> Database:
        """The app's database (for checks of what was, or was not, written)."""
        db: Database = self.app.state.services.db
        return db

    def auth(self, role: str = "agent") -> dict[str, str]:
        """The Authorization header of an agent of ``role``."""
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def create_customer(self, **body: Any) -> dict[str, Any]:
        """POST a customer; the answer must be 201."""
        response = await self.api.post("/api/v1/customers", json=body)
        assert response.status_code == 201, response.text
        customer: dict[str, Any] = response.json()
        return customer

    async def note(self, customer_id: str, text: str) -> dict[str, Any]:
        """POST a note; the answer must be 201."""
        response = await self.api.post(
            f"/api/v1/customers/{customer_id}/notes", json={"text": text}
        )
        assert response.status_code == 201, response.text
        event: dict[str, Any] = response.json()
        return event

    async def count(self, table: sa.Table, *where: Any) -> int:
        """Rows of a table (straight from the database)."""
        async with self.db.read() as conn:
            query = sa.select(sa.func.count()).select_from(table).where(*where)
            return int((await conn.execute(query)).scalar_one())

    def stored_files(self) -> list[Path]:
        """Every file under the data folder (temporary ones included)."""
        return sorted(p for p in self.data_dir.rglob("*") if p.is_file())


async def _migrate(url: str) -> None:
    db = Database.from_url(url)
    try:
        await upgrade(db)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def pg_api_database() -> Iterator[str]:
    """One migrated PostgreSQL database for the session's API tests (dropped at the end)."""
    name = asyncio.run(_make_pg_database())
    try:
        asyncio.run(_migrate(pg_url(name)))
        yield name
    finally:
        asyncio.run(_drop_pg_database(name))


async def empty_pg_database(name: str) -> None:
    """Delete every row of every table but the migration version.

    DELETE in foreign-key order (``timeline.schema``) takes ~10 ms where TRUNCATE takes
    ~200 ms; a table the metadata does not know, or any error, falls back to TRUNCATE.
    """
    conn = await asyncpg.connect(f"{PG_DSN.rsplit('/', 1)[0]}/{name}", timeout=5)
    try:
        present = {
            row[0]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables "
                "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            )
        }
        ordered = [t.name for t in reversed(metadata.sorted_tables) if t.name in present]
        if set(ordered) == present:
            try:
                async with conn.transaction():
                    for table in ordered:
                        await conn.execute(f'DELETE FROM "{table}"')
                return
            except asyncpg.PostgresError:
                pass
        if present:
            names = ", ".join(f'"{table}"' for table in sorted(present))
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def api_database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(SQLAlchemy URL, PostgreSQL database name or None); one test per database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/hub.db", None
    name: str = request.getfixturevalue("pg_api_database")
    return pg_url(name), name


@pytest.fixture
async def api_database_url(api_database: tuple[str, str | None]) -> str:
    """An empty, migrated database URL, once per database."""
    url, pg_name = api_database
    if pg_name is not None:
        await empty_pg_database(pg_name)
    return url


@pytest.fixture
async def hub(api_database_url: str, tmp_path: Path) -> AsyncIterator[Hub]:
    """The app on SQLite and on PostgreSQL, lifespan running, agents of every role."""
    data_dir = tmp_path / "files"
    data_dir.mkdir()
    settings = hub_settings(api_database_url, data_dir)
    app = create_app(settings, run_workers=False)
    async with app.router.lifespan_context(app):
        tokens = await make_agents(app.state.services.db)
        checker = await schema_checker(app)
        doc = checker.doc
        hooks = {"response": [checking_hook(checker)]}

        def client(headers: dict[str, str]) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                base_url=BASE_URL,
                headers=headers,
                event_hooks=hooks,
            )

        async with (
            client({"Authorization": f"Bearer {tokens['agent']}"}) as api,
            client({}) as anon,
        ):
            yield Hub(app, settings, data_dir, tokens, doc, checker, api, anon)


@contextlib.asynccontextmanager
async def serving(
    app: Starlette, *, lifespan: Literal["auto", "on", "off"] = "on"
) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(15):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(10):
                await task
        finally:
            sock.close()
