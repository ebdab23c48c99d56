"""The database tables (SQLAlchemy Core). Migrations in ``timeline/migrations`` create them.

Ids are client-made time-ordered strings (``timeline.ids``), so bulk inserts with Core
``executemany`` need no ``RETURNING``. The timeline index is exactly
``(customer_id, occurred_at DESC, id DESC)``, the keyset of the timeline query.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType: sa.types.TypeEngine[Any] = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
ID = sa.String(32)

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(200)),
    sa.Column("timezone", sa.String(64)),
    sa.Column("attributes", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("merged_into", ID, sa.ForeignKey("customers.id")),
    sa.Column("erased_at", UTCDateTime),
    sa.Index("ix_customers_name", "name"),
)

identities = sa.Table(
    "identities",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("customer_id", ID, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("value", sa.String(320), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("kind", "value", name="uq_identities_kind_value"),
    sa.Index("ix_identities_customer", "customer_id"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("customer_id", ID, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("external_id", sa.String(998)),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("status", sa.String(32)),
    sa.Column("subject", sa.Text),
    sa.Column("text", sa.Text),
    sa.Column("html", sa.Text),
    sa.Column("thread_key", sa.String(998)),
    sa.Column("sender", sa.String(320)),
    sa.Column("recipient", sa.String(320)),
    sa.Column("attachments", JSONType),
    sa.Column("data", JSONType),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("channel", "external_id", name="uq_events_channel_external"),
    sa.Index(
        "ix_events_timeline",
        "customer_id",
        sa.text("occurred_at DESC"),
        sa.text("id DESC"),
    ),
    sa.Index("ix_events_thread", "thread_key"),
    # A customer's counts per channel (customer JSON, screen pops) read this index only.
    sa.Index("ix_events_customer_channel", "customer_id", "channel"),
)

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("customer_id", ID, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("event_id", ID, sa.ForeignKey("events.id")),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64)),
    sa.Column("content_id", sa.String(255)),
    sa.Column("source_url", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Set when retention deleted the file (migration 0007): the row stays as its marker.
    sa.Column("purged_at", UTCDateTime),
    sa.Index("ix_documents_customer", "customer_id"),
    sa.Index("ix_documents_event", "event_id"),
    sa.Index("ix_documents_sha256", "sha256"),
)

consents = sa.Table(
    "consents",
    metadata,
    sa.Column("customer_id", ID, sa.ForeignKey("customers.id"), primary_key=True),
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("purpose", sa.String(16), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("event_id", ID),
)

merges = sa.Table(
    "merges",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("target_id", ID, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("source_id", ID, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("record", JSONType, nullable=False),
    sa.Column("actor", sa.String(64)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("undone_at", UTCDateTime),
    sa.Index("ix_merges_target", "target_id"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("event_id", ID, sa.ForeignKey("events.id"), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
    sa.Column("payload", JSONType, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("not_before", UTCDateTime, nullable=False),
    sa.Column("claimed_at", UTCDateTime),
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("provider_id", sa.String(200)),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_outbox_ready", "state", "channel", "not_before"),
    sa.Index("ix_outbox_event", "event_id"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("response", JSONType),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_idempotency_created", "created_at"),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("name", sa.String(200)),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("team", sa.String(100)),
    # The agent's own phone (E.164): click-to-call rings it first.
    sa.Column("phone", sa.String(32)),
    sa.Column("password_hash", sa.String(255)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("disabled_at", UTCDateTime),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("agent_id", ID, sa.ForeignKey("agents.id"), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime),
    sa.Column("revoked_at", UTCDateTime),
)

#: Calls in progress (``timeline.calls``): one row per call leg, keyed by the provider's
#: CallSid; a dialled leg names its parent. The call's record is its event; this is the
#: live state agents see (ringing, in progress, who answered), so a refreshed console or
#: a restarted hub still knows it. A row is closed (``ended_at``) when its call ends, and
#: goes with its event (erasure).
calls = sa.Table(
    "calls",
    metadata,
    sa.Column("call_sid", sa.String(64), primary_key=True),
    sa.Column("parent_sid", sa.String(64)),
    sa.Column("event_id", ID, sa.ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("caller", sa.String(320)),
    sa.Column("callee", sa.String(320)),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("answered_at", UTCDateTime),
    sa.Column("answered_by", sa.String(320)),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_calls_parent", "parent_sid"),
    sa.Index("ix_calls_event", "event_id"),
    sa.Index(
        "ix_calls_open",
        "started_at",
        sqlite_where=sa.text("ended_at IS NULL AND parent_sid IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL AND parent_sid IS NULL"),
    ),
)

# -- email (migration 0002)

mail_checkpoints = sa.Table(
    "mail_checkpoints",
    metadata,
    sa.Column("folder", sa.String(512), primary_key=True),
    sa.Column("uidvalidity", sa.BigInteger, nullable=False),
    sa.Column("last_uid", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

#: Message-IDs (and subject keys) to the thread they belong to (RFC 5322 3.6.4 threading).
thread_keys = sa.Table(
    "thread_keys",
    metadata,
    sa.Column("key", sa.String(998), primary_key=True),
    sa.Column("thread_key", sa.String(998), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

#: Addresses mail cannot be delivered to (after a hard bounce, RFC 3463 5.x.x).
bounces = sa.Table(
    "bounces",
    metadata,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("hard", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(16)),
    sa.Column("event_id", ID),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# -- console sessions (migration 0005)

#: Agents' console sessions (``hub.sessions``): only the SHA-256 of the cookie's random
#: value is stored, with the session's CSRF token; a session ends when idle too long,
#: at its absolute expiry, or at logout (the row is deleted).
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("agent_id", ID, sa.ForeignKey("agents.id"), nullable=False),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_seen_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Index("ix_console_sessions_agent", "agent_id"),
    sa.Index("ix_console_sessions_expires", "expires_at"),
)

# -- audit and teams (migration 0004)

#: The audit log (``timeline.audit``, OWASP ASVS 5.0 V16): append-only, who did what to
#: which customer, when and from where. ``agent_id`` is the actor (null: the command
#: line); ``detail`` holds ids and codes, never message bodies or identities.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("agent_id", ID),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("customer_id", ID),
    sa.Column("detail", JSONType, nullable=False),
    sa.Column("ip", sa.String(64)),
    sa.Index("ix_audit_log_at", "at", "id"),
    sa.Index("ix_audit_log_customer", "customer_id", "at"),
    sa.Index("ix_audit_log_agent", "agent_id", "at"),
)

#: The teams a customer belongs to (``timeline.customers`` scoping). A customer without
#: a row is unassigned and visible to every agent; with rows, only to those teams' agents
#: (supervisors and admins see every customer).
customer_teams = sa.Table(
    "customer_teams",
    metadata,
    sa.Column("customer_id", ID, sa.ForeignKey("customers.id"), primary_key=True),
    sa.Column("team", sa.String(100), primary_key=True),
    sa.Index("ix_customer_teams_team", "team"),
)

# -- login throttling (migration 0007)

#: Failed console logins per key (``hub.throttle``): ``account:<sha256 of the email>`` or
#: ``ip:<address>``; a fixed window of ``failures`` since ``first_at``, and
#: ``blocked_until`` once a limit is reached. Rows are deleted after a success (the
#: account's) or once their window and block are over.
login_throttle = sa.Table(
    "login_throttle",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("first_at", UTCDateTime, nullable=False),
    sa.Column("blocked_until", UTCDateTime),
)
