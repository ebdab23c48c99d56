"""The SQLite write path's one-trip statements store exactly what SQLAlchemy stores.

``timeline.sqlite_direct.Insert`` converts values with the columns' own bind processors;
a row written that way must be byte-for-byte the row ``conn.execute(table.insert())``
writes (timestamps in UTC, JSON text, NULLs). Outside an open SQLite transaction, and on
PostgreSQL, it declines (None) and the caller uses SQLAlchemy.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from timeline import sqlite_direct
from timeline.db import Database
from timeline.events import Attachment
from timeline.ingest import ingest
from timeline.schema import customers, events
from timeline.store import get_event

from .conftest import REGION, T0, email_in, sms_in

WHEN = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-7)))


def _customer(customer_id: str) -> dict[str, Any]:
    return {
        "id": customer_id,
        "name": None,
        "timezone": None,
        "attributes": {"list": [1, "é"], "none": None},
        "created_at": WHEN,
        "updated_at": WHEN,
        "merged_into": None,
        "erased_at": None,
    }


async def test_direct_insert_stores_what_sqlalchemy_stores(db: Database) -> None:
    insert = sqlite_direct.Insert(customers)
    async with db.write() as conn:
        await conn.execute(customers.insert(), [_customer("a" * 32)])
        count = await insert.many(conn, [_customer("b" * 32)])
        if count is None:
            assert not db.is_sqlite
            await conn.execute(customers.insert(), [_customer("b" * 32)])
        else:
            assert db.is_sqlite and count == 1
    async with db.read() as conn:
        raw = (
            await conn.execute(
                sa.select(
                    sa.cast(customers.c.attributes, sa.Text),
                    sa.cast(customers.c.created_at, sa.Text),
                    sa.cast(customers.c.updated_at, sa.Text),
                    customers.c.name,
                    customers.c.erased_at,
                ).order_by(customers.c.id)
            )
        ).all()
    assert raw[0] == raw[1]


async def test_outside_a_write_transaction_it_declines(db: Database) -> None:
    async with db.read() as conn:
        # A read's BEGIN is deferred on SQLite: nothing may run before it.
        assert await sqlite_direct.rows(conn, "SELECT 1", ()) is None
        assert await sqlite_direct.Insert(events).many(conn, []) is None


async def test_ingested_rows_read_back_typed(db: Database) -> None:
    result = await ingest(db, [sms_in("+14155550100", at=WHEN, text="hé")], region=REGION)
    stored = result.outcomes[0].event
    assert stored is not None
    async with db.read() as conn:
        again = await get_event(conn, stored.id)
    assert again == stored
    assert again.occurred_at == WHEN and again.occurred_at.utcoffset() == timedelta(0)
    assert again.occurred_at > T0


async def test_ingested_event_row_is_what_sqlalchemy_stores(db: Database) -> None:
    # The events insert builds converted tuples itself (timeline.ingest._insert_sqlite):
    # every column's stored text must equal SQLAlchemy's insert of the same values.
    ev = dataclasses.replace(
        email_in("Jane@Example.COM", subject="é ☃", text='a "q" \\ \u0001'),
        occurred_at=WHEN,
        data={"message_id": "<x@y>", "list": [1, "é", None], "nested": {"a": 1.5}},
        attachments=(Attachment("a.pdf", "application/pdf", url="https://example.com/a"),),
    )
    result = await ingest(db, [ev], region=REGION)
    stored = result.outcomes[0].event
    assert stored is not None and result.outcomes[0].kind == "created"
    async with db.write() as conn:
        stamps = (
            await conn.execute(
                sa.select(events.c.created_at, events.c.updated_at).where(events.c.id == stored.id)
            )
        ).one()
        twin = {
            "id": "f" * 32,
            "customer_id": stored.customer_id,
            "channel": stored.channel,
            "kind": stored.kind,
            "direction": stored.direction,
            "external_id": "twin",
            "occurred_at": stored.occurred_at,
            "status": stored.status,
            "subject": stored.subject,
            "text": stored.text,
            "html": stored.html,
            "thread_key": stored.thread_key,
            "sender": stored.sender,
            "recipient": stored.recipient,
            "attachments": stored.attachments,
            "data": stored.data,
            "created_at": stamps.created_at,
            "updated_at": stamps.updated_at,
        }
        await conn.execute(events.insert(), [twin])
    columns = [c for c in events.c if c.name not in ("id", "external_id")]
    async with db.read() as conn:
        raw = (
            await conn.execute(
                sa.select(*[sa.cast(c, sa.Text) for c in columns])
                .where(events.c.id.in_([stored.id, "f" * 32]))
                .order_by(events.c.id)
            )
        ).all()
    assert len(raw) == 2 and raw[0] == raw[1]
    assert stored.attachments and stored.attachments[0]["filename"] == "a.pdf"
