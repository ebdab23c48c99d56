"""Merging two customers, and undoing it.

A merge moves the other customer's identities, events, documents and consent to the
target and marks the other as merged. What moved, and the target's fields before, are
recorded in ``merges.record``, so ``unmerge`` puts back exactly what moved (events that
arrived for the target after the merge stay with it).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.customers import require_active
from timeline.errors import Conflict, NotFound
from timeline.events import utcnow
from timeline.ids import new_id
from timeline.records import from_iso, iso
from timeline.schema import consents, customers, documents, events, identities, merges


async def _ids(conn: AsyncConnection, table: sa.Table, customer_id: str) -> list[str]:
    rows = await conn.execute(sa.select(table.c.id).where(table.c.customer_id == customer_id))
    return list(rows.scalars())


async def merge(
    conn: AsyncConnection, target_id: str, other_id: str, *, actor: str | None = None
) -> str:
    """Move ``other_id``'s identities, events, documents and consent to ``target_id``."""
    if target_id == other_id:
        raise Conflict("a customer cannot be merged into itself")
    await require_active(conn, target_id)
    await require_active(conn, other_id)
    target = (
        (await conn.execute(sa.select(customers).where(customers.c.id == target_id)))
        .mappings()
        .one()
    )
    other = (
        (await conn.execute(sa.select(customers).where(customers.c.id == other_id)))
        .mappings()
        .one()
    )
    other_consent = [
        dict(r)
        for r in (
            await conn.execute(sa.select(consents).where(consents.c.customer_id == other_id))
        ).mappings()
    ]
    target_consent = {
        (r["channel"], r["purpose"]): dict(r)
        for r in (
            await conn.execute(sa.select(consents).where(consents.c.customer_id == target_id))
        ).mappings()
    }
    # The newer consent wins, as a later change always does (timeline.consent): a STOP
    # sent from the other's number must survive the merge.
    taken = [
        c
        for c in other_consent
        if (c["channel"], c["purpose"]) not in target_consent
        or c["updated_at"] > target_consent[(c["channel"], c["purpose"])]["updated_at"]
    ]
    replaced = [
        target_consent[(c["channel"], c["purpose"])]
        for c in taken
        if (c["channel"], c["purpose"]) in target_consent
    ]
    record: dict[str, Any] = {
        "identities": await _ids(conn, identities, other_id),
        "events": await _ids(conn, events, other_id),
        "documents": await _ids(conn, documents, other_id),
        "consent": [{**c, "updated_at": iso(c["updated_at"])} for c in other_consent],
        "consent_replaced": [{**c, "updated_at": iso(c["updated_at"])} for c in replaced],
        "target_before": {
            "name": target["name"],
            "timezone": target["timezone"],
            "attributes": target["attributes"],
            "updated_at": iso(target["updated_at"]),
        },
        "other_before": {"updated_at": iso(other["updated_at"])},
    }
    for table in (identities, events, documents):
        await conn.execute(
            table.update().where(table.c.customer_id == other_id).values(customer_id=target_id)
        )
    await conn.execute(consents.delete().where(consents.c.customer_id == other_id))
    for c in replaced:
        await conn.execute(
            consents.delete().where(
                consents.c.customer_id == target_id,
                consents.c.channel == c["channel"],
                consents.c.purpose == c["purpose"],
            )
        )
    if taken:
        await conn.execute(consents.insert(), [{**c, "customer_id": target_id} for c in taken])
    now = utcnow()
    await conn.execute(
        customers.update()
        .where(customers.c.id == target_id)
        .values(
            name=target["name"] or other["name"],
            timezone=target["timezone"] or other["timezone"],
            attributes={**(other["attributes"] or {}), **(target["attributes"] or {})},
            updated_at=now,
        )
    )
    await conn.execute(
        customers.update()
        .where(customers.c.id == other_id)
        .values(merged_into=target_id, updated_at=now)
    )
    merge_id = new_id()
    await conn.execute(
        merges.insert().values(
            id=merge_id,
            target_id=target_id,
            source_id=other_id,
            record=record,
            actor=actor,
            created_at=now,
        )
    )
    return merge_id


async def unmerge(conn: AsyncConnection, merge_id: str) -> tuple[str, str]:
    """Undo a merge: everything that moved goes back; returns (target_id, other_id)."""
    row = (
        (await conn.execute(sa.select(merges).where(merges.c.id == merge_id)))
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise NotFound("merge", merge_id)
    if row["undone_at"] is not None:
        raise Conflict("this merge was already undone")
    target_id, other_id = row["target_id"], row["source_id"]
    later = await conn.execute(
        sa.select(merges.c.id).where(merges.c.source_id == target_id, merges.c.undone_at.is_(None))
    )
    if later.first() is not None:
        raise Conflict("the target was itself merged since: undo that merge first")
    record = row["record"]
    for table, key in ((identities, "identities"), (events, "events"), (documents, "documents")):
        ids = record[key]
        for start in range(0, len(ids), 500):
            await conn.execute(
                table.update()
                .where(table.c.id.in_(ids[start : start + 500]), table.c.customer_id == target_id)
                .values(customer_id=other_id)
            )
    for c in record["consent"]:
        await conn.execute(
            consents.delete().where(
                consents.c.customer_id == target_id,
                consents.c.channel == c["channel"],
                consents.c.purpose == c["purpose"],
                consents.c.event_id.is_not_distinct_from(c["event_id"]),
            )
        )
    if record["consent"]:
        await conn.execute(
            consents.insert(),
            [
                {
                    **c,
                    "customer_id": other_id,
                    "updated_at": from_iso(c["updated_at"]),
                }
                for c in record["consent"]
            ],
        )
    if record.get("consent_replaced"):
        for c in record["consent_replaced"]:
            present = await conn.execute(
                sa.select(consents.c.customer_id).where(
                    consents.c.customer_id == target_id,
                    consents.c.channel == c["channel"],
                    consents.c.purpose == c["purpose"],
                )
            )
            if present.first() is None:
                await conn.execute(
                    consents.insert().values(
                        **{**c, "customer_id": target_id, "updated_at": from_iso(c["updated_at"])}
                    )
                )
    before = record["target_before"]
    await conn.execute(
        customers.update()
        .where(customers.c.id == target_id)
        .values(
            name=before["name"],
            timezone=before["timezone"],
            attributes=before["attributes"],
            updated_at=from_iso(before["updated_at"]),
        )
    )
    await conn.execute(
        customers.update()
        .where(customers.c.id == other_id)
        .values(
            merged_into=None,
            updated_at=from_iso(record["other_before"]["updated_at"]),
        )
    )
    await conn.execute(merges.update().where(merges.c.id == merge_id).values(undone_at=utcnow()))
    return target_id, other_id


async def history(conn: AsyncConnection, customer_id: str) -> list[dict[str, Any]]:
    """The merges into or out of a customer, newest first."""
    rows = await conn.execute(
        sa.select(merges)
        .where(sa.or_(merges.c.target_id == customer_id, merges.c.source_id == customer_id))
        .order_by(merges.c.created_at.desc(), merges.c.id.desc())
    )
    return [
        {
            "id": r["id"],
            "target_id": r["target_id"],
            "other_id": r["source_id"],
            "actor": r["actor"],
            "created_at": iso(r["created_at"]),
            "undone_at": iso(r["undone_at"]),
            "moved": {k: len(r["record"][k]) for k in ("identities", "events", "documents")},
        }
        for r in rows.mappings()
    ]
