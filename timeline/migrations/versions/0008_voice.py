"""voice: agents' own phones (click-to-call rings them); events by customer and channel

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 04:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phone", sa.String(length=32), nullable=True))
    # The per-channel counts of a customer (screen pops, GET /customers/{id}) from the
    # index alone, instead of one table row read per event of the customer.
    op.create_index("ix_events_customer_channel", "events", ["customer_id", "channel"])


def downgrade() -> None:
    op.drop_index("ix_events_customer_channel", table_name="events")
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_column("phone")
