"""full-text index filled per batch by the writers, not by a per-row insert trigger

SQLite only: drop ``events_fts_ai``. FTS5 flushes its pending terms at the end of each
statement, so the trigger (one FTS insert per row) cost ~60 us of CPU a row;
``timeline.search.index_new_events`` now indexes each batch of new rows with one
``INSERT ... SELECT`` in the writer's transaction. The update and delete triggers stay
(erasure and edits still reach the index). PostgreSQL's generated ``tsvector`` column is
unchanged. https://sqlite.org/fts5.html#external_content_tables

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 04:10:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS events_fts_ai")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER events_fts_ai AFTER INSERT ON events BEGIN "
            "INSERT INTO events_fts(rowid, subject, text) "
            "VALUES (new.rowid, new.subject, new.text); END"
        )
