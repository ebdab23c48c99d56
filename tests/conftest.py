"""Shared fixtures: a migrated database on SQLite and on PostgreSQL.

Storage and API tests take ``db`` (or ``database_url``) and run on both databases.
PostgreSQL is the server on 127.0.0.1:5432 (see ../shared/PEERS.md); each test gets a
database of its own, dropped afterwards. Without the server the PostgreSQL half skips
with the reason, except under ``CI=true``, where a missing peer is a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from timeline.db import Database
from timeline.migrate import upgrade

PG_DSN = os.environ.get("COMMHUB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() == "true"


def peer_missing(reason: str) -> None:
    """Skip for want of a real peer; under CI=true that is a failure instead."""
    if IN_CI:
        pytest.fail(f"CI=true and a required peer is missing: {reason}")
    pytest.skip(reason)


async def _make_pg_database() -> str:
    name = f"commhub_test_{secrets.token_hex(6)}"
    try:
        conn = await asyncpg.connect(PG_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        peer_missing(f"PostgreSQL not reachable at {PG_DSN}: {exc}")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def pg_url(name: str) -> str:
    """The SQLAlchemy URL of a test database on the PostgreSQL server."""
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty (not yet migrated) database URL, once per database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/hub.db"
        return
    name = await _make_pg_database()
    try:
        yield pg_url(name)
    finally:
        await _drop_pg_database(name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated database, on SQLite and on PostgreSQL."""
    database = Database.from_url(database_url)
    await upgrade(database)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder for documents."""
    path = tmp_path / "files"
    path.mkdir()
    yield path
