"""One trip to aiosqlite's thread for a statement of the SQLite write path.

SQLAlchemy's ``conn.execute`` costs aiosqlite four trips to its thread (cursor, execute,
fetch, close) and ~200-280 us of CPU; ``execute_fetchall`` on the same driver connection
is one trip and ~30 us (measured in docs/performance.md, SMS section). A group-commit
batch runs a handful of statements, so on a busy machine those trips (thread wake-ups)
are most of its wall time. :func:`rows` sends plain SQL text with positional parameters
straight to the driver, inside the connection's open transaction, for statements whose
parameters and results need no type conversion (text in, text out). Reads of the
timeline use ``timeline.db.DirectQuery`` the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.db import Statement, fetch_on


def _driver(conn: AsyncConnection) -> Any:
    """The aiosqlite connection under ``conn`` if it is in an open transaction, else None."""
    if (conn.dialect.name, conn.dialect.driver) != ("sqlite", "aiosqlite"):
        return None
    sync = conn.sync_connection
    if sync is None or sync.invalidated or sync.closed:
        return None
    try:
        driver: Any = sync.connection.driver_connection
    except sa.exc.MissingGreenlet:
        return None
    if driver is None or not driver.in_transaction:
        return None
    return driver


async def rows(conn: AsyncConnection, sql: str, params: Sequence[Any]) -> list[Any] | None:
    """The rows of ``sql`` in ``conn``'s transaction, in one trip; None if not possible.

    Only for aiosqlite, and only once a transaction is open on the driver connection
    (``db.write()`` sends ``BEGIN IMMEDIATE`` at once): a statement sent before a
    deferred BEGIN would run outside the transaction. On None the caller runs its
    SQLAlchemy statement instead. Errors are the driver's (``sqlite3`` exceptions).
    """
    driver = _driver(conn)
    if driver is None:
        return None
    return list(await driver.execute_fetchall(sql, tuple(params)))


async def fetch_each(
    conn: AsyncConnection, statements: Sequence[Statement]
) -> list[list[Any]] | None:
    """The rows of each statement, in order, in ``conn``'s transaction, in one trip to
    aiosqlite's thread; None if not possible (as :func:`rows`).

    For a batch of small reads (a burst of screen pops: ~26 statements): each trip costs
    a wake-up of that thread and of the event loop, and a hand-over of the GIL both ways.
    """
    driver = _driver(conn)
    if driver is None:
        return None
    return await fetch_on(driver, "sqlite", statements)


class Insert:
    """A table's INSERT compiled by SQLAlchemy once, sent by the driver in one trip.

    Values go through each column's own bind processor (``TypeEngine.bind_processor``
    of the dialect's implementation: UTC timestamps, JSON), so rows are stored exactly
    as ``conn.execute(table.insert(), rows)`` stores them. Every row must give every
    column of the table. ``suffix`` is appended to the statement (``ON CONFLICT ...``,
    ``RETURNING ...``).
    """

    def __init__(self, table: sa.Table, suffix: str = "") -> None:
        self.table = table
        self.suffix = suffix
        self._ready: tuple[str, str, list[Any]] | None = None

    def _prepare(self, dialect: sa.Dialect) -> tuple[str, str, list[Any]]:
        if self._ready is None:
            compiled = self.table.insert().compile(dialect=dialect)
            head, _, values = str(compiled).partition(" VALUES ")
            processors = [
                self.table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                for name in compiled.positiontup or ()
            ]
            self._ready = (
                head,
                values,
                list(zip(compiled.positiontup or (), processors, strict=True)),
            )
        return self._ready

    def converters(self, conn: AsyncConnection) -> dict[str, Callable[[Any], Any] | None] | None:
        """Each column's bind processor (None: stored as given), or None off the driver path.

        For callers that build rows as tuples in table column order, converted, and send
        them with :meth:`many_converted` (values shared by a batch converted once).
        """
        if _driver(conn) is None:
            return None
        return dict(self._prepare(conn.dialect)[2])

    def names(self, dialect: sa.Dialect) -> tuple[str, ...]:
        """The columns in the order :meth:`many_converted` takes them."""
        return tuple(name for name, _ in self._prepare(dialect)[2])

    async def many_converted(
        self, conn: AsyncConnection, rows: list[tuple[Any, ...]]
    ) -> int | None:
        """``executemany`` of rows already converted (:meth:`converters`), or None."""
        driver = _driver(conn)
        if driver is None:
            return None
        head, values, _ = self._prepare(conn.dialect)
        sql = f"{head} VALUES {values} {self.suffix}".rstrip()
        cursor = await driver.executemany(sql, rows)
        return int(cursor.rowcount)

    def _params(self, dialect: sa.Dialect, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        columns: list[list[Any]] = []
        for name, process in self._prepare(dialect)[2]:
            values = [row[name] for row in rows]
            if process is not None:
                # A value shared by the rows (a batch's timestamp, None) is converted once.
                last: Any = _UNSET
                done: Any = None
                converted = []
                for value in values:
                    if value is not last:
                        last, done = value, process(value)
                    converted.append(done)
                values = converted
            columns.append(values)
        return list(zip(*columns, strict=True))

    async def many(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> int | None:
        """``executemany`` of ``rows``: the rows changed, or None (use SQLAlchemy)."""
        driver = _driver(conn)
        if driver is None:
            return None
        head, values, _ = self._prepare(conn.dialect)
        sql = f"{head} VALUES {values} {self.suffix}".rstrip()
        cursor = await driver.executemany(sql, self._params(conn.dialect, rows))
        return int(cursor.rowcount)

    async def returning(
        self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]
    ) -> list[Any] | None:
        """One multi-row INSERT per 500 rows with ``suffix`` (its RETURNING rows), or None."""
        driver = _driver(conn)
        if driver is None:
            return None
        head, values, _ = self._prepare(conn.dialect)
        found: list[Any] = []
        for start in range(0, len(rows), 500):
            part = rows[start : start + 500]
            sql = f"{head} VALUES {', '.join([values] * len(part))} {self.suffix}"
            params = [v for row in self._params(conn.dialect, part) for v in row]
            found += await driver.execute_fetchall(sql, params)
        return found


_UNSET = object()


def in_list(sql: str, n: int) -> str:
    """``sql`` (ending in ``IN``) followed by ``(?, ?, ...)`` for ``n`` values."""
    return f"{sql} ({', '.join('?' * n)})"  # placeholders only: values stay parameters
