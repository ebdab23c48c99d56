"""Full-text search over event subjects and texts, one function for both databases.

SQLite: an FTS5 external-content table ``events_fts``
(https://sqlite.org/fts5.html#external_content_tables). New rows are indexed by their
writer, one statement per batch (:func:`index_new_events`, :func:`index_event`):
migration 0006 dropped the per-row insert trigger, which cost ~60 us a row. Updates
of ``subject``/``text`` and deletes stay with the migration's triggers, so erasure
removes words from the index. PostgreSQL: a generated ``tsvector`` column with a GIN
index (https://www.postgresql.org/docs/15/textsearch-tables.html), maintained by the
database on every insert and update. User input never reaches the query syntax: each
word is quoted, and all words must match.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline import sqlite_direct
from timeline.schema import events

_WORD = re.compile(r"\w+", re.UNICODE)


def words(q: str) -> list[str]:
    """The searchable words of a query (letters and digits), at most 16."""
    return _WORD.findall(q)[:16]


def event_matches(dialect: str, q: str) -> sa.ColumnElement[bool]:
    """A WHERE clause on ``events`` true for events whose subject or text has every word."""
    terms = words(q)
    if not terms:
        return sa.false()
    if dialect == "postgresql":
        query = sa.func.plainto_tsquery("simple", " ".join(terms))
        return sa.literal_column("events.search").op("@@")(query)
    match = " ".join('"' + t.replace('"', "") + '"' for t in terms)
    fts = sa.text("SELECT rowid FROM events_fts WHERE events_fts MATCH :fts_q").bindparams(
        fts_q=match
    )
    return sa.literal_column("events.rowid").in_(fts)


def matching_customer_ids(dialect: str, q: str) -> sa.Select[tuple[str]]:
    """SELECT of the customer ids that have an event matching ``q``."""
    return sa.select(events.c.customer_id).where(event_matches(dialect, q))


_INDEX_FROM_SQL = (
    "INSERT INTO events_fts(rowid, subject, text) "
    "SELECT rowid, subject, text FROM events "
    "WHERE rowid >= (SELECT rowid FROM events WHERE id = ?) ORDER BY rowid"
)
_INDEX_ONE = sa.text(
    "INSERT INTO events_fts(rowid, subject, text) "
    "SELECT rowid, subject, text FROM events WHERE id = :id"
)


async def index_new_events(conn: AsyncConnection, first_id: str) -> None:
    """Add a batch of just-inserted events to the full-text index (SQLite).

    ``first_id`` is the first row of the batch's insert; the batch is every row from it
    to the end of the table. One ``INSERT ... SELECT`` in rowid order: FTS5 flushes its
    pending terms at the end of a statement and whenever a rowid is not above the
    previous one, so per-row or unordered inserts cost ~60 us a row against ~4 us here.
    Exact because SQLite writers are serialized (``BEGIN IMMEDIATE``) and a new rowid is
    always above the largest one: the rows from ``first_id`` on are this insert's. Call
    it right after the insert, and only when every row of it was inserted (an id must
    not be indexed twice). PostgreSQL needs nothing (its ``tsvector`` is generated).
    https://sqlite.org/fts5.html#external_content_tables
    """
    if conn.dialect.name != "sqlite":
        return
    if await sqlite_direct.rows(conn, _INDEX_FROM_SQL, (first_id,)) is None:
        await conn.exec_driver_sql(_INDEX_FROM_SQL, (first_id,))


async def index_event(conn: AsyncConnection, event_id: str) -> None:
    """Add one just-inserted event to the full-text index (SQLite; PostgreSQL: nothing)."""
    if conn.dialect.name == "sqlite":
        await conn.execute(_INDEX_ONE, {"id": event_id})
