"""Applying the Alembic migrations in ``timeline/migrations`` (``serve`` and ``migrate``)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from timeline.db import Database

_SCRIPTS = Path(__file__).parent / "migrations"


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic config pointing at our scripts, optionally bound to a connection."""
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: sa.Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several hub processes may start at once; one migrates, the others wait.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(7201604)"))
    command.upgrade(alembic_config(connection), "head")


def _current(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(db: Database) -> None:
    """Bring the database to the newest schema (idempotent; safe on every start)."""
    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def is_current(db: Database) -> bool:
    """Whether the database is at the newest migration."""
    async with db.engine.connect() as conn:
        current = await conn.run_sync(_current)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return current == head
