"""``timeline.sqlite_direct.fetch_each``: several reads in one trip to aiosqlite's thread,
inside the connection's open transaction (so they see its own writes); elsewhere it
declines (None) and the caller reads another way."""

from __future__ import annotations

import sqlalchemy as sa

from timeline import sqlite_direct
from timeline.db import Database
from timeline.schema import customers

from .test_ingest_direct import _customer

READS = [
    ("SELECT id, name FROM customers WHERE id = ?", ("a" * 32,)),
    ("SELECT count(*) FROM customers", ()),
    ("SELECT id FROM customers WHERE id = ?", ("nobody",)),
]


async def test_each_statement_rows_in_order_seeing_the_transaction(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(customers.insert(), [_customer("a" * 32)])  # not committed yet
        found = await sqlite_direct.fetch_each(conn, READS)
        if not db.is_sqlite:
            assert found is None
            return
        one_by_one = [await sqlite_direct.rows(conn, sql, params) for sql, params in READS]
        await conn.rollback()
    assert found == one_by_one == [[("a" * 32, None)], [(1,)], []]
    assert await sqlite_direct.fetch_each(conn, []) is None  # the connection is closed


async def test_outside_a_transaction_it_declines(db: Database) -> None:
    async with db.read() as conn:
        # A read's BEGIN is deferred on SQLite: nothing may run before it.
        assert await sqlite_direct.fetch_each(conn, READS) is None
        await conn.execute(sa.select(customers.c.id).limit(1))  # BEGIN sent
        found = await sqlite_direct.fetch_each(conn, READS[1:])
    assert found == ([[(0,)], []] if db.is_sqlite else None)
