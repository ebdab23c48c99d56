"""security: login throttling, and the retention marker of documents

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 04:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import timeline.schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first_at", timeline.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("blocked_until", timeline.schema.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("documents") as batch:
        batch.add_column(
            sa.Column("purged_at", timeline.schema.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("purged_at")
    op.drop_table("login_throttle")
