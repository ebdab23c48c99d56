"""Small SQL helpers that differ between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


def insert_ignoring(conn: AsyncConnection, table: sa.Table, index_elements: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (index_elements) DO NOTHING`` for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=index_elements)
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=index_elements)


def upsert(conn: AsyncConnection, table: sa.Table) -> Any:
    """A dialect ``INSERT`` that has ``on_conflict_do_update`` (SQLite and PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def chunks(items: Sequence[Any], size: int = 500) -> list[Sequence[Any]]:
    """``items`` in slices of at most ``size`` (SQLite caps bound parameters)."""
    return [items[i : i + size] for i in range(0, len(items), size)]
