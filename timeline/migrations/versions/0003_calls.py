"""calls: the live state of telephone calls

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import timeline.schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_OPEN = "ended_at IS NULL AND parent_sid IS NULL"


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_sid", sa.String(length=64), nullable=False),
        sa.Column("parent_sid", sa.String(length=64), nullable=True),
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("caller", sa.String(length=320), nullable=True),
        sa.Column("callee", sa.String(length=320), nullable=True),
        sa.Column("started_at", timeline.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("answered_at", timeline.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("answered_by", sa.String(length=320), nullable=True),
        sa.Column("ended_at", timeline.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", timeline.schema.UTCDateTime(timezone=True), nullable=False),
        # Erasing a customer deletes their events; their calls go with them.
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("call_sid"),
    )
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.create_index("ix_calls_parent", ["parent_sid"], unique=False)
        batch_op.create_index("ix_calls_event", ["event_id"], unique=False)
    # Only open parent calls are listed to agents: a partial index keeps that list cheap
    # however many calls were ever made.
    op.create_index(
        "ix_calls_open",
        "calls",
        ["started_at"],
        unique=False,
        sqlite_where=sa.text(_OPEN),
        postgresql_where=sa.text(_OPEN),
    )


def downgrade() -> None:
    op.drop_index("ix_calls_open", table_name="calls")
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.drop_index("ix_calls_event")
        batch_op.drop_index("ix_calls_parent")
    op.drop_table("calls")
