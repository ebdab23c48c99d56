"""Helpers for the timeline tests: event factories, row snapshots, extra Database objects.

Everything runs against the real databases of ``tests/conftest.py`` (``db`` is SQLite and
PostgreSQL); nothing of ours is mocked. ``make_db`` opens more Database objects on the
same database (separate pools, as separate hub processes would have).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from timeline.db import Database
from timeline.events import (
    Attachment,
    Channel,
    Direction,
    Event,
    Identity,
    IdentityKind,
    Kind,
)
from timeline.files import FileStore
from timeline.schema import consents, customers, documents, events, identities, outbox

REGION = "US"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
OUR_NUMBER = Identity(IdentityKind.PHONE, "+14155559999")

_counter = itertools.count(1)


def phone(n: int) -> str:
    """A distinct valid US number (555-01xx is reserved for fiction) for small ``n``."""
    return f"+1415555{100 + n:04d}"


def sid(prefix: str = "SM") -> str:
    """A fresh provider id."""
    return f"{prefix}{next(_counter):030d}"


def sms_in(
    sender: str,
    *,
    external_id: str | None = None,
    at: datetime = T0,
    text: str | None = "hello",
    status: str | None = "received",
    attachments: Sequence[Attachment] = (),
    update_only: bool = False,
) -> Event:
    """An inbound SMS from ``sender`` (any phone spelling)."""
    return Event(
        channel=Channel.SMS,
        kind=Kind.MESSAGE,
        direction=Direction.INBOUND,
        occurred_at=at,
        external_id=external_id if external_id is not None else sid(),
        status=status,
        text=text,
        sender=Identity(IdentityKind.PHONE, sender),
        recipient=OUR_NUMBER,
        attachments=tuple(attachments),
        update_only=update_only,
    )


def sms_out(
    recipient: str,
    *,
    external_id: str | None = None,
    at: datetime = T0,
    status: str | None = "queued",
    text: str | None = "see you",
    update_only: bool = False,
    data: dict[str, Any] | None = None,
) -> Event:
    """An outbound SMS to ``recipient``."""
    return Event(
        channel=Channel.SMS,
        kind=Kind.MESSAGE,
        direction=Direction.OUTBOUND,
        occurred_at=at,
        external_id=external_id if external_id is not None else sid(),
        status=status,
        text=text,
        sender=OUR_NUMBER,
        recipient=Identity(IdentityKind.PHONE, recipient),
        update_only=update_only,
        data=data or {},
    )


def email_in(
    sender: str,
    *,
    external_id: str | None = None,
    at: datetime = T0,
    subject: str | None = "Question",
    text: str | None = "hello",
    attachments: Sequence[Attachment] = (),
) -> Event:
    """An inbound email."""
    return Event(
        channel=Channel.EMAIL,
        kind=Kind.MESSAGE,
        direction=Direction.INBOUND,
        occurred_at=at,
        external_id=external_id if external_id is not None else f"<{sid('m')}@example.com>",
        status="received",
        subject=subject,
        text=text,
        sender=Identity(IdentityKind.EMAIL, sender),
        recipient=Identity(IdentityKind.EMAIL, "support@hub.example"),
        attachments=tuple(attachments),
    )


def call(
    caller: str, *, external_id: str, status: str, at: datetime = T0, update_only: bool = False
) -> Event:
    """An inbound call (status callbacks repeat the CallSid)."""
    return Event(
        channel=Channel.VOICE,
        kind=Kind.CALL,
        direction=Direction.INBOUND,
        occurred_at=at,
        external_id=external_id,
        status=status,
        sender=Identity(IdentityKind.PHONE, caller),
        recipient=OUR_NUMBER,
        update_only=update_only,
    )


def note(customer_id: str, text: str, *, at: datetime = T0) -> Event:
    """An agent's note on a customer (no identity, no external id)."""
    return Event(
        channel=Channel.NOTE,
        kind=Kind.NOTE,
        direction=Direction.INTERNAL,
        occurred_at=at,
        text=text,
        customer_id=customer_id,
    )


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


async def count(db: Database, table: sa.Table, *where: Any) -> int:
    """Rows of ``table`` matching ``where``."""
    async with db.read() as conn:
        query = sa.select(sa.func.count()).select_from(table)
        if where:
            query = query.where(*where)
        return int((await conn.execute(query)).scalar_one())


async def rows(db: Database, table: sa.Table, *where: Any) -> list[dict[str, Any]]:
    """Rows of ``table`` as dicts, in a stable order."""
    async with db.read() as conn:
        query = sa.select(table)
        if where:
            query = query.where(*where)
        result = (await conn.execute(query)).mappings().all()
    return sorted((dict(r) for r in result), key=repr)


async def snapshot(db: Database, customer_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every row of the customer-owned tables for these customers (merges excluded)."""
    ids = list(customer_ids)
    out: dict[str, list[dict[str, Any]]] = {}
    for table in (customers, identities, events, documents, consents):
        column = table.c.id if table is customers else table.c.customer_id
        out[table.name] = await rows(db, table, column.in_(ids))
    out["outbox"] = await rows(
        db,
        outbox,
        outbox.c.event_id.in_(sa.select(events.c.id).where(events.c.customer_id.in_(ids))),
    )
    return out


@pytest.fixture
def files(data_dir: Path) -> FileStore:
    """A FileStore in a fresh folder."""
    return FileStore(data_dir)


@pytest.fixture
async def make_db(database_url: str, db: Database) -> AsyncIterator[Callable[[], Database]]:
    """Open more Database objects (own engine and pool) on the migrated test database."""
    made: list[Database] = []

    def factory() -> Database:
        extra = Database.from_url(database_url)
        made.append(extra)
        return extra

    try:
        yield factory
    finally:
        for extra in made:
            await extra.dispose()
