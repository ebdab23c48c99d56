"""``timeline.db``: transactions on SQLite with a deferred BEGIN, and DirectQuery.

On SQLite ``read()`` sends its BEGIN with the first statement (in the same trip to
aiosqlite's thread when that statement is a DirectQuery); the block must still read one
snapshot, and writes must still be atomic and roll back.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline import customers as customer_ops
from timeline import db as db_module
from timeline import migrate, store
from timeline.db import Database, DirectQuery
from timeline.ingest import ingest_batch
from timeline.schema import customers

from .conftest import REGION, note


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database.from_url(f"sqlite+aiosqlite:///{tmp_path}/hub.db")
    await migrate.upgrade(db)
    yield db
    await db.dispose()


_NAMES = DirectQuery(
    sa.select(customers.c.name).where(customers.c.id == sa.bindparam("id", "")).limit(1)
)


async def _rename(db: Database, customer_id: str, name: str) -> None:
    async with db.write() as conn:
        await conn.execute(
            customers.update().where(customers.c.id == customer_id).values(name=name)
        )


async def _by_direct_query(conn: AsyncConnection, customer_id: str) -> str:
    rows = await _NAMES.rows(conn, id=customer_id)
    return str(rows[0][0])


async def _by_sqlalchemy(conn: AsyncConnection, customer_id: str) -> str:
    query = sa.select(customers.c.name).where(customers.c.id == customer_id)
    return str((await conn.execute(query)).scalar_one())


async def _in_transaction(conn: AsyncConnection) -> bool:
    driver: Any = (await conn.get_raw_connection()).driver_connection
    return bool(driver.in_transaction)


Reader = Callable[[AsyncConnection, str], Awaitable[str]]


@pytest.mark.parametrize("first", [_by_direct_query, _by_sqlalchemy])
async def test_a_read_block_is_one_snapshot_on_sqlite(sqlite_db: Database, first: Reader) -> None:
    async with sqlite_db.write() as conn:
        customer_id = await customer_ops.create(conn, name="before")
    async with sqlite_db.read() as conn:
        assert await first(conn, customer_id) == "before"
        await _rename(sqlite_db, customer_id, "after")  # committed meanwhile elsewhere
        assert await _by_direct_query(conn, customer_id) == "before"
        assert await _by_sqlalchemy(conn, customer_id) == "before"
    async with sqlite_db.read() as conn:
        assert await _by_direct_query(conn, customer_id) == "after"


async def test_read_statements_see_each_commit(sqlite_db: Database) -> None:
    async with sqlite_db.write() as conn:
        customer_id = await customer_ops.create(conn, name="before")
    async with sqlite_db.read_statements() as conn:
        assert await _by_direct_query(conn, customer_id) == "before"
        await _rename(sqlite_db, customer_id, "after")
        assert await _by_direct_query(conn, customer_id) == "after"


async def test_writes_roll_back_and_leave_no_transaction_open(sqlite_db: Database) -> None:
    async with sqlite_db.write() as conn:
        customer_id = await customer_ops.create(conn, name="kept")
    with pytest.raises(RuntimeError):
        async with sqlite_db.write() as conn:
            await conn.execute(
                customers.update().where(customers.c.id == customer_id).values(name="lost")
            )
            raise RuntimeError("boom")
    # Reads that fail half-way leave nothing open either.
    with pytest.raises(RuntimeError):
        async with sqlite_db.read() as conn:
            await _by_direct_query(conn, customer_id)
            raise RuntimeError("boom")
    for _ in range(3):  # every pooled connection is usable and sees the committed name
        async with sqlite_db.read() as conn:
            assert await _by_sqlalchemy(conn, customer_id) == "kept"
            assert await _in_transaction(conn)
        async with sqlite_db.read_statements() as conn:
            assert await _by_direct_query(conn, customer_id) == "kept"
            assert not await _in_transaction(conn)
    async with sqlite_db.write() as conn:
        await store.page(conn, customer_id)  # a DirectQuery inside BEGIN IMMEDIATE
        await ingest_batch(conn, [note(customer_id, "x")], region=REGION)
    async with sqlite_db.read() as conn:
        items, _ = await store.page(conn, customer_id)
    assert [e.text for e in items] == ["x"]


def _file_size(db: Database) -> int:
    return os.stat(str(db.engine.url.database)).st_size


async def test_fetch_each_reads_sqlite_through_a_memory_map(sqlite_db: Database) -> None:
    """fetch_each's connections map the file (``_READ_MMAP_BYTES``); what writers commit
    later, checkpointed into a file that grew past what was mapped, is read all the same."""
    async with sqlite_db.read() as conn:  # a connection fetch_each has not used
        assert (await conn.exec_driver_sql("PRAGMA mmap_size")).scalar() == 0
    mapped = await sqlite_db.fetch_each([("PRAGMA mmap_size", ())])
    assert mapped[0][0][0] > 0
    async with sqlite_db.write() as conn:
        first = await customer_ops.create(conn, name="first")
    dialect = sqlite_db.engine.dialect
    assert (await sqlite_db.fetch_each([_NAMES.statement_for(dialect, id=first)]))[0][0][0] == (
        "first"
    )
    size = _file_size(sqlite_db)
    async with sqlite_db.write() as conn:
        ids = [await customer_ops.create(conn, name="x" * 500 + str(i)) for i in range(2000)]
    await sqlite_db.checkpoints.wait()
    assert _file_size(sqlite_db) > 2 * size
    rows = await sqlite_db.fetch_each([_NAMES.statement_for(dialect, id=i) for i in ids[-50:]])
    assert [found[0][0] for found in rows] == ["x" * 500 + str(i) for i in range(1950, 2000)]
    assert (await sqlite_db.fetch_each([("PRAGMA mmap_size", ())]))[0][0][0] == mapped[0][0][0]


async def test_fetch_each_reads_every_statement_on_one_connection(db: Database) -> None:
    async with db.write() as conn:
        first = await customer_ops.create(conn, name="one")
        second = await customer_ops.create(conn, name="two")
    dialect = db.engine.dialect
    statements = [
        _NAMES.statement_for(dialect, id=first),
        _NAMES.statement_for(dialect, id="no-such-customer"),
        _NAMES.statement_for(dialect, id=second),
    ]
    for _ in range(3):  # each time on a pooled connection, returned with nothing open
        rows = await db.fetch_each(statements)
        assert [[tuple(r) for r in found] for found in rows] == [[("one",)], [], [("two",)]]
    await _rename(db, first, "changed")  # committed after: the next call sees it
    assert [tuple(r) for r in (await db.fetch_each(statements[:1]))[0]] == [("changed",)]
    async with db.write() as conn:  # the pool's connections still take a write
        await conn.execute(customers.update().where(customers.c.id == second).values(name="2"))
    async with db.read() as conn:
        assert await _by_sqlalchemy(conn, second) == "2"


async def _driver(conn: AsyncConnection) -> Any:
    return (await conn.get_raw_connection()).driver_connection


async def test_sqlite_reuses_the_warmest_connection(sqlite_db: Database) -> None:
    """The pool hands out the connection returned last, so back-to-back writers (batch
    ingest) keep the pages they read cached; a connection gets the larger page cache at
    its first write, and one that only reads keeps SQLite's default (memory)."""
    async with sqlite_db.read() as first:
        async with sqlite_db.read() as second:
            warm, cold = await _driver(first), await _driver(second)
            assert warm is not cold
            default = (await second.exec_driver_sql("PRAGMA cache_size")).scalar_one()
        # ``second`` went back first, ``first`` last: ``first`` is the warm one.
    async with sqlite_db.write() as conn:
        assert await _driver(conn) is warm
        size = (await conn.exec_driver_sql("PRAGMA cache_size")).scalar_one()
    assert size == -db_module._CACHE_KIB
    assert default == -2000  # https://www.sqlite.org/pragma.html#pragma_cache_size
    async with sqlite_db.read() as first:
        async with sqlite_db.read() as second:
            assert await _driver(second) is cold
            assert (await second.exec_driver_sql("PRAGMA cache_size")).scalar_one() == default
