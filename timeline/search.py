"""Full-text search over event subjects and texts, one function for both databases.

SQLite: an FTS5 external-content table ``events_fts`` kept in step by triggers
(https://sqlite.org/fts5.html). PostgreSQL: a generated ``tsvector`` column with a GIN
index (https://www.postgresql.org/docs/15/textsearch-tables.html). Both are made by the
first migration. User input never reaches the query syntax: each word is quoted, and all
words must match.
"""

from __future__ import annotations

import re

import sqlalchemy as sa

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
