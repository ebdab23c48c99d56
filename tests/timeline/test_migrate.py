"""Alembic migrations: applied on every start, so a second upgrade must change nothing."""

from __future__ import annotations

import sqlalchemy as sa

from timeline import customers as customer_ops
from timeline.db import Database
from timeline.migrate import is_current, upgrade
from timeline.schema import metadata


def _schema(conn: sa.Connection) -> dict[str, object]:
    inspector = sa.inspect(conn)
    return {
        table: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)),
            sorted(str(u["column_names"]) for u in inspector.get_unique_constraints(table)),
        )
        for table in sorted(inspector.get_table_names())
    }


async def test_upgrade_twice_is_a_no_op(database_url: str) -> None:
    db = Database.from_url(database_url)
    try:
        assert await is_current(db) is False  # an empty database
        await upgrade(db)
        assert await is_current(db) is True
        async with db.write() as conn:
            customer_id = await customer_ops.create(conn, name="kept")
            schema = await conn.run_sync(_schema)
            version = (
                await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).scalar_one()
        await upgrade(db)
        assert await is_current(db) is True
        async with db.read() as conn:
            assert await conn.run_sync(_schema) == schema
            assert (await customer_ops.get(conn, customer_id)).name == "kept"
            versions = (
                (await conn.execute(sa.text("SELECT version_num FROM alembic_version")))
                .scalars()
                .all()
            )
        assert versions == [version]
        # Every table and column of timeline.schema exists.
        for name, table in metadata.tables.items():
            columns = {c[0] for c in schema[name][0]}  # type: ignore[index]
            assert {c.name for c in table.columns} <= columns, name
        # The timeline index is exactly the keyset of the page query.
        async with db.read() as conn:
            if db.is_sqlite:
                info = (
                    await conn.execute(sa.text("PRAGMA index_xinfo('ix_events_timeline')"))
                ).all()
                keyed = [(c[2], c[3]) for c in info if c[5]]  # (name, desc) of key columns
                assert keyed == [("customer_id", 0), ("occurred_at", 1), ("id", 1)]
            else:
                definition = (
                    await conn.execute(
                        sa.text(
                            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_events_timeline'"
                        )
                    )
                ).scalar_one()
                assert "(customer_id, occurred_at DESC, id DESC)" in definition
    finally:
        await db.dispose()
