"""The audit log: an append-only record of security-relevant actions.

OWASP ASVS 5.0 V16 (security logging): who (``agent_id``, null for the command line) did
what (``action``, a dotted name such as ``customer.export``) to which customer, when (UTC)
and from where (``ip``). This module only ever inserts and reads; nothing in the hub
updates a row, and only retention (``HUB_RETENTION_AUDIT_DAYS``, ``timeline.retention``)
deletes old ones (erasure of a customer keeps the records of it, with ids only:
``detail`` must never hold message bodies, names, phone numbers or addresses).

Pages are keyset pages on ``(at, id)``, newest first (index ``ix_audit_log_at``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.db import Database
from timeline.events import utcnow
from timeline.ids import new_id
from timeline.records import iso
from timeline.schema import audit_log
from timeline.store import BadCursor

#: The actions the hub records (others may be added; the column is free text).
ACTIONS = (
    "access.denied",
    "agent.create",
    "agent.role",
    "customer.erase",
    "customer.export",
    "customer.merge",
    "customer.teams",
    "customer.unmerge",
    "agent.team",
    "login",
    "login.failed",
    "login.throttled",
    "logout",
    "password.change",
    "password.change.failed",
    "password.reset",
    "retention.applied",
    "token.issue",
    "token.revoke",
)
MAX_PAGE = 200


async def record(
    target: AsyncConnection | Database,
    action: str,
    *,
    agent_id: str | None = None,
    customer_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
    ip: str | None = None,
) -> str:
    """Append one record; returns its id.

    Given a connection, the record commits (or rolls back) with the caller's
    transaction, so an export or erasure and its record are one; given the
    :class:`Database`, it is written in a transaction of its own (denials, logins).
    """
    row = {
        "id": new_id(),
        "at": utcnow(),
        "agent_id": agent_id,
        "action": action[:64],
        "customer_id": customer_id,
        "detail": dict(detail or {}),
        "ip": ip[:64] if ip else None,
    }
    if isinstance(target, Database):
        async with target.write() as conn:
            await conn.execute(audit_log.insert().values(**row))
    else:
        await target.execute(audit_log.insert().values(**row))
    return str(row["id"])


def to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A record as the API shows it."""
    return {
        "id": row["id"],
        "at": iso(row["at"]),
        "agent_id": row["agent_id"],
        "action": row["action"],
        "customer_id": row["customer_id"],
        "detail": row["detail"] or {},
        "ip": row["ip"],
    }


def _cursor(at: datetime, record_id: str) -> str:
    raw = f"{at.isoformat()}|{record_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, record_id = raw.partition("|")
        when = datetime.fromisoformat(at)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise BadCursor("not a valid cursor") from None
    if not record_id or when.tzinfo is None:
        raise BadCursor("not a valid cursor")
    return when, record_id


async def page(
    conn: AsyncConnection,
    *,
    customer_id: str | None = None,
    agent_id: str | None = None,
    action: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], str | None]:
    """Records matching the filters, newest first; (items, next cursor or None)."""
    query = sa.select(audit_log)
    if customer_id:
        query = query.where(audit_log.c.customer_id == customer_id)
    if agent_id:
        query = query.where(audit_log.c.agent_id == agent_id)
    if action:
        query = query.where(audit_log.c.action == action)
    if cursor:
        at, record_id = _read_cursor(cursor)
        query = query.where(
            sa.or_(
                audit_log.c.at < at,
                sa.and_(audit_log.c.at == at, audit_log.c.id < record_id),
            )
        )
    query = query.order_by(audit_log.c.at.desc(), audit_log.c.id.desc()).limit(limit + 1)
    rows = list((await conn.execute(query)).mappings())
    nxt = _cursor(rows[limit - 1]["at"], rows[limit - 1]["id"]) if len(rows) > limit else None
    return [to_json(dict(r)) for r in rows[:limit]], nxt
