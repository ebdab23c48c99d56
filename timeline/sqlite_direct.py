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

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection


async def rows(conn: AsyncConnection, sql: str, params: Sequence[Any]) -> list[Any] | None:
    """The rows of ``sql`` in ``conn``'s transaction, in one trip; None if not possible.

    Only for aiosqlite, and only once a transaction is open on the driver connection
    (``db.write()`` sends ``BEGIN IMMEDIATE`` at once): a statement sent before a
    deferred BEGIN would run outside the transaction. On None the caller runs its
    SQLAlchemy statement instead. Errors are the driver's (``sqlite3`` exceptions).
    """
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
    return list(await driver.execute_fetchall(sql, tuple(params)))


def in_list(sql: str, n: int) -> str:
    """``sql`` (ending in ``IN``) followed by ``(?, ?, ...)`` for ``n`` values."""
    return f"{sql} ({', '.join('?' * n)})"  # placeholders only: values stay parameters
