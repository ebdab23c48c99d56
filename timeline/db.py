"""The database: engine set-up for SQLite and PostgreSQL, and read/write transactions.

SQLite (the embedded default) runs in WAL mode with ``synchronous=NORMAL`` (survives a
process crash; https://www.sqlite.org/wal.html), foreign keys on and a busy timeout.
pysqlite starts transactions lazily, which turns a read-then-write into a "database is
locked" under concurrency, so writers open theirs with ``BEGIN IMMEDIATE``
(https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl)
and writers in one process queue on a lock instead of spinning on the busy handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolProxiedConnection, PoolResetState
from sqlalchemy.util import await_only

if TYPE_CHECKING:
    from timeline.wal import Checkpointer

_IMMEDIATE = "commhub_immediate"
#: SQLite's automatic checkpoint (inside a commit, with its fsync) as the fallback only:
#: 160 MB of log (4 KB pages), above _LOG_LIMIT_BYTES. The default, 1,000 pages, is less
#: than one 500-event ingest batch writes, so every such commit also copied the log back
#: and fsynced (~75 us of the ~125 us of wall time per ingested event on the 1M-event
#: bench database).
_AUTOCHECKPOINT_PAGES = 40_000
#: SQLite starts the log over in the first commit after a checkpoint that copied all of
#: it, never while one runs; writers back to back (batch ingest) commit while the
#: background checkpoint of the previous commit runs, so the log could keep growing.
#: A writer that finds it past this size waits for the running checkpoint first (the
#: log then starts over), and SQLite cuts the file back to it (``journal_size_limit``).
#: 128 MB rather than 32: batch ingest on the 1M-event bench database (~4 MB of log a
#: 500-event batch) waited a quarter as often; A/B 13,645-14,272 -> 14,458-16,467
#: events/s (docs/performance.md, timeline, third pass). The log is that large only
#: under back-to-back writers; each commit's checkpoint still follows it at once.
_LOG_LIMIT_BYTES = 128 * 1024 * 1024
#: SQLite's page cache per connection, in KiB (``cache_size``; the default is 2 MB). A
#: 500-event ingest batch on the 1M-event bench database dirties ~1,100 pages (4.4 MB):
#: past 2 MB SQLite spills dirty pages to the log in the middle of the transaction and
#: writes again those dirtied once more, and evicts index pages it reads again. With
#: 32 MB and the pool's most recently used connection taken first (``pool_use_lifo``,
#: so back-to-back writers keep one warm cache) the ingest wrote 21% and read 52% fewer
#: pages (syscalls counted, docs/performance.md, timeline, fourth pass). Memory: up to
#: this much per connection that has run a write transaction (set at its first
#: ``write()``), only as pages are read; connections that have only read keep SQLite's
#: default. With it on every connection the email bench's 20,000-message sync grew the
#: process by 115 MB (its limit: 100 MB; 53 MB with the default cache, 88 MB now).
_CACHE_KIB = 32 * 1024
#: In a pooled connection's ``info`` once it has ``_CACHE_KIB``.
_WRITE_CACHE = "commhub_write_cache"
#: How many driver connections ``Database.fetch_each`` keeps out of the pool between calls.
_KEEP_IDLE = 2
#: In ``Connection.info`` while a deferred BEGIN waits for the first statement (SQLite).
_BEGIN_PENDING = "commhub_begin_pending"
#: How much of the database file ``Database.fetch_each``'s SQLite connections read through
#: a memory map (https://www.sqlite.org/mmap.html) instead of a pread() per page: a first
#: timeline page reads ~50 rows at random places. HTTP A/B on the 1M-event bench database
#: (docs/performance.md, timeline, fourth pass): server CPU -5 to -10% a page. SQLite caps
#: it at its compile-time limit (2 GB by default); past it, pages are read as before.
#: Mapped pages count in the process's RSS (file-backed, shared with the page cache), so
#: only connections that served ``fetch_each`` map (mostly the ``_KEEP_IDLE`` it keeps;
#: one it gives back to the pool keeps its map there).
_READ_MMAP_BYTES = 2**31
#: In a pooled connection's ``info`` once ``_READ_MMAP_BYTES`` is set on it.
_MMAP_SET = "commhub_mmap"


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` with the hub's connection settings."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            # A file's pool (a memory database has one connection): one warm page cache.
            kwargs.setdefault("pool_use_lifo", True)
        # Reset on return is ours (_on_reset): the pool's own would roll back every
        # returned connection, one more driver-thread hop after each COMMIT.
        kwargs.setdefault("pool_reset_on_return", None)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    # No pre-ping: with asyncpg it is BEGIN; SELECT 1; ROLLBACK, three round trips on
    # every checkout. A connection the server dropped raises a disconnect error, which
    # invalidates the pool (one failed request after a database restart).
    kwargs.setdefault("pool_pre_ping", False)
    return create_async_engine(url, **kwargs)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # Checkpoints run beside the writers (Database.checkpoints, after every write
        # transaction); SQLite's own, inside a commit, only if the log grows past this.
        cursor.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
        cursor.execute(f"PRAGMA journal_size_limit={_LOG_LIMIT_BYTES}")
        cursor.close()
        # SQLite's lower() folds ASCII only; names like "Émile" must match too.
        dbapi_connection.create_function("lower", 1, _lower, deterministic=True)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        if not conn.get_execution_options().get(_IMMEDIATE):
            # A deferred BEGIN takes no lock and no snapshot until the first statement
            # reads, so it is sent with that statement: by _before_execute, or by a
            # DirectQuery in the same trip to aiosqlite's thread as its SELECT.
            conn.info[_BEGIN_PENDING] = True
            return
        # Straight to aiosqlite: one trip to its thread (exec_driver_sql takes three:
        # cursor, execute, close). The statement has no result to close.
        pooled = conn.connection
        driver: Any = pooled.driver_connection
        if not pooled.info.get(_WRITE_CACHE):
            await_only(driver.execute(f"PRAGMA cache_size=-{_CACHE_KIB}"))
            pooled.info[_WRITE_CACHE] = True
        await_only(driver.execute("BEGIN IMMEDIATE"))

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _before_execute(conn: sa.Connection, *_args: Any) -> None:
        if conn.info.pop(_BEGIN_PENDING, False):
            driver: Any = conn.connection.driver_connection
            await_only(driver.execute("BEGIN"))

    @event.listens_for(engine.sync_engine, "commit")
    @event.listens_for(engine.sync_engine, "rollback")
    def _on_end(conn: sa.Connection) -> None:
        conn.info.pop(_BEGIN_PENDING, None)

    @event.listens_for(engine.sync_engine.pool, "reset")
    def _on_reset(dbapi_connection: Any, record: Any, state: PoolResetState) -> None:
        record.info.pop(_BEGIN_PENDING, None)
        # read()/write() end their transactions, and Connection.close() rolls back one
        # left open; roll back only what is still open (a connection checked in by
        # other means). https://docs.sqlalchemy.org/en/20/core/pooling.html#custom-reset
        if state.terminate_only or not state.asyncio_safe:
            return  # the connection is being discarded, or cannot be awaited here
        try:
            open_transaction = dbapi_connection.driver_connection.in_transaction
        except ValueError:  # aiosqlite: the connection is already closed
            return
        if open_transaction:
            dbapi_connection.rollback()


class DirectQuery:
    """A prebuilt SELECT sent straight through the async driver: one call, raw rows.

    For the hottest reads (the first timeline page, the token lookup). SQLAlchemy's
    ``conn.execute`` costs aiosqlite four trips to its thread (cursor, execute, fetch,
    close) plus statement and result processing; this compiles the statement once per
    dialect and sends it with aiosqlite ``execute_fetchall`` or asyncpg ``fetch`` on the
    connection's own driver connection, inside its transaction. Rows come back as the
    driver returns them: no type processing (SQLite timestamps and JSON are text). On
    other drivers it falls back to ``conn.execute`` (typed rows): see :meth:`direct`.

    On PostgreSQL SQLAlchemy's asyncpg adapter sends BEGIN with its first statement of a
    transaction; a DirectQuery before that runs on its own (under READ COMMITTED every
    statement takes its own snapshot either way), one after it inside the transaction.

    Every bind parameter of the statement needs a value when built (``bindparam(name,
    value=...)``), so expanding ``IN`` lists render; values given to :meth:`rows` replace
    them by name.
    """

    _DRIVERS = {("sqlite", "aiosqlite"), ("postgresql", "asyncpg")}

    def __init__(self, statement: sa.Select[Any]) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {}

    @classmethod
    def direct(cls, conn: AsyncConnection) -> bool:
        """Whether ``conn``'s driver is used directly (its rows are raw)."""
        return (conn.dialect.name, conn.dialect.driver) in cls._DRIVERS

    def statement_for(self, dialect: sa.Dialect, **values: Any) -> tuple[str, tuple[Any, ...]]:
        """The SQL on ``dialect`` and its positional parameters."""
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(
                dialect=dialect, compile_kwargs={"render_postcompile": True}
            )
            found = compiled.string, tuple(compiled.positiontup or ()), dict(compiled.params)
            self._compiled[dialect.name] = found
        sql, order, fixed = found
        given = {**fixed, **values}
        return sql, tuple(given[name] for name in order)

    async def rows(self, conn: AsyncConnection, **values: Any) -> list[Any]:
        """The rows for these parameter values, in ``conn``'s transaction."""
        if not self.direct(conn):
            return list(await conn.execute(self.statement, values))
        sql, params = self.statement_for(conn.dialect, **values)
        return await self.driver_rows(conn, sql, params)

    @staticmethod
    async def driver_rows(conn: AsyncConnection, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """The rows of SQL text in the driver's own dialect (only where :meth:`direct`)."""
        driver = await _driver_connection(conn)
        if conn.dialect.name != "sqlite":
            return list(await driver.fetch(sql, *params))
        info = conn.sync_connection.info if conn.sync_connection is not None else {}
        if info.pop(_BEGIN_PENDING, False):
            # BEGIN and the SELECT in one trip to aiosqlite's thread. aiosqlite has no
            # public call for that: _execute(fn) is how its own methods reach the thread
            # (SQLAlchemy's adapter reaches further in); without it, two trips.
            run = getattr(driver, "_execute", None)
            if run is None:
                await driver.execute("BEGIN")
            else:
                return list(await run(_begin_and_fetch, driver, sql, params))
        return list(await driver.execute_fetchall(sql, params))


#: SQL text in the driver's own dialect and its positional parameters.
Statement = tuple[str, tuple[Any, ...]]


def _fetch_each(driver: Any, statements: Sequence[Statement]) -> list[list[Any]]:
    """In aiosqlite's thread: the rows of each statement, in order (autocommit reads)."""
    connection = driver._conn  # the sqlite3 connection, used only in aiosqlite's thread
    return [connection.execute(sql, params).fetchall() for sql, params in statements]


async def fetch_on(driver: Any, dialect: str, statements: Sequence[Statement]) -> list[list[Any]]:
    """The rows of each statement on an aiosqlite or asyncpg connection, in order; on
    aiosqlite in one trip to its thread."""
    if dialect != "sqlite":
        return [list(await driver.fetch(sql, *params)) for sql, params in statements]
    run = getattr(driver, "_execute", None)  # see DirectQuery.driver_rows
    if run is None:
        return [list(await driver.execute_fetchall(sql, p)) for sql, p in statements]
    rows: list[list[Any]] = await run(_fetch_each, driver, statements)
    return rows


def _begin_and_fetch(driver: Any, sql: str, params: tuple[Any, ...]) -> list[Any]:
    """In aiosqlite's thread: BEGIN, then the rows of ``sql``."""
    connection = driver._conn  # the sqlite3 connection, used only in aiosqlite's thread
    connection.execute("BEGIN")
    rows: list[Any] = connection.execute(sql, params).fetchall()
    return rows


async def _driver_connection(conn: AsyncConnection) -> Any:
    """The aiosqlite or asyncpg connection under ``conn``.

    Read from the sync connection when it is open (no greenlet switch, unlike
    ``get_raw_connection``); a connection that must be revalidated first takes that way.
    """
    sync = conn.sync_connection
    if sync is not None and not sync.invalidated and not sync.closed:
        try:
            return sync.connection.driver_connection
        except sa.exc.MissingGreenlet:
            pass
    return (await conn.get_raw_connection()).driver_connection


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class Database:
    """The engine plus the hub's two kinds of transaction: ``read()`` and ``write()``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self._direct = (self.dialect, engine.dialect.driver) in DirectQuery._DRIVERS
        #: Pooled driver connections kept checked out for :meth:`fetch_each` (at most
        #: _KEEP_IDLE): taking one back from SQLAlchemy's pool costs ~13 us of CPU.
        self._idle: list[PoolProxiedConnection] = []
        self._checkpoints: Checkpointer | None = None
        database = engine.url.database if self.dialect == "sqlite" else None
        self._log_path = f"{database}-wal" if database and database != ":memory:" else None

    def _log_too_long(self) -> bool:
        """Whether SQLite's log file has grown past ``_LOG_LIMIT_BYTES`` (see there)."""
        if self._log_path is None:
            return False
        try:
            return os.stat(self._log_path).st_size > _LOG_LIMIT_BYTES
        except OSError:  # no log yet
            return False

    @property
    def checkpoints(self) -> Checkpointer:
        """This database's background WAL checkpoints (``timeline.wal``; no-op on PostgreSQL).

        ``write()`` asks for one after every commit on SQLite.
        """
        if self._checkpoints is None:
            from timeline.wal import Checkpointer  # timeline.wal imports this module

            self._checkpoints = Checkpointer(self)
        return self._checkpoints

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Database:
        """A Database on a new engine for ``url``."""
        return cls(make_engine(url, **kwargs))

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded SQLite database."""
        return self.dialect == "sqlite"

    @property
    def direct(self) -> bool:
        """Whether :meth:`fetch_each` and ``DirectQuery`` use the driver itself (raw rows)."""
        return self._direct

    async def fetch_each(self, statements: Sequence[Statement]) -> list[list[Any]]:
        """The raw rows of several reads, on one pooled connection, outside a transaction.

        Only where :attr:`direct`. Each statement sees what was committed when it started
        (as in :meth:`read_statements`). A driver connection, not a SQLAlchemy
        ``Connection`` (checking one out and in costs ~45 us of CPU), and on SQLite one
        trip to aiosqlite's thread for all of them (~25-30 us of CPU a trip): the hottest
        reads (the token and a first timeline page) are one call.
        """
        if not self._direct:
            raise RuntimeError("fetch_each needs aiosqlite or asyncpg")
        raw = self._idle.pop() if self._idle else await self.engine.raw_connection()
        try:
            driver: Any = raw.driver_connection
            if self.dialect == "sqlite" and not raw.info.get(_MMAP_SET):
                # Once per pooled connection (it keeps the setting when it goes back).
                await driver.execute_fetchall(f"PRAGMA mmap_size={_READ_MMAP_BYTES}")
                raw.info[_MMAP_SET] = True
            rows = await fetch_on(driver, self.dialect, statements)
        except BaseException:
            raw.close()  # back to the pool, which rolls back what may be left open
            raise
        if len(self._idle) < _KEEP_IDLE:
            self._idle.append(raw)
        else:
            raw.close()
        return rows

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction.

        SQLite: one snapshot for the whole block. PostgreSQL (READ COMMITTED, its
        default): each statement sees what was committed when it started.
        """
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.asynccontextmanager
    async def read_statements(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads that need no common snapshot (write nothing here).

        Each :class:`DirectQuery` runs on its own and sees what was committed when it
        started (PostgreSQL's READ COMMITTED, on SQLite too), with no BEGIN or COMMIT:
        on SQLite that saves two trips to aiosqlite's thread. The first SQLAlchemy
        statement begins a transaction as usual (``read()`` from there on); it is rolled
        back when the block ends.
        """
        async with self.engine.connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed when the block ends, rolled back on error."""
        if self._write_lock is None:
            async with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        async with self._write_lock:
            if self._checkpoints is not None and self._log_too_long():
                await self._checkpoints.wait()
            async with self.engine.connect() as conn:
                await conn.execution_options(**{_IMMEDIATE: True})
                async with conn.begin():
                    yield conn
        # Committed: the log is copied back beside the next writers, not in their commits.
        self.checkpoints.request()

    async def ping(self) -> None:
        """Raise unless the database answers."""
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def dispose(self) -> None:
        """Close every pooled connection (after a running checkpoint)."""
        if self._checkpoints is not None:
            await self._checkpoints.close()
        while self._idle:
            self._idle.pop().close()
        await self.engine.dispose()
