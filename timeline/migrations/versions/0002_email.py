"""email: IMAP checkpoints, thread keys, bounced addresses

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import timeline.schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mail_checkpoints",
        sa.Column("folder", sa.String(length=512), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", timeline.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("folder"),
    )
    op.create_table(
        "thread_keys",
        sa.Column("key", sa.String(length=998), nullable=False),
        sa.Column("thread_key", sa.String(length=998), nullable=False),
        sa.Column("updated_at", timeline.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "bounces",
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("hard", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("event_id", sa.String(length=32), nullable=True),
        sa.Column("updated_at", timeline.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address"),
    )


def downgrade() -> None:
    op.drop_table("bounces")
    op.drop_table("thread_keys")
    op.drop_table("mail_checkpoints")
