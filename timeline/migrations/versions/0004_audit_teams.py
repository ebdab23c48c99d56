"""audit log and customer teams

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import timeline.schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("at", timeline.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("agent_id", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=32), nullable=True),
        sa.Column("detail", timeline.schema.JSONType, nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_at", ["at", "id"], unique=False)
        batch_op.create_index("ix_audit_log_customer", ["customer_id", "at"], unique=False)
        batch_op.create_index("ix_audit_log_agent", ["agent_id", "at"], unique=False)
    op.create_table(
        "customer_teams",
        sa.Column("customer_id", sa.String(length=32), nullable=False),
        sa.Column("team", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("customer_id", "team"),
    )
    with op.batch_alter_table("customer_teams", schema=None) as batch_op:
        batch_op.create_index("ix_customer_teams_team", ["team"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("customer_teams", schema=None) as batch_op:
        batch_op.drop_index("ix_customer_teams_team")
    op.drop_table("customer_teams")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_agent")
        batch_op.drop_index("ix_audit_log_customer")
        batch_op.drop_index("ix_audit_log_at")
    op.drop_table("audit_log")
