"""Customers and their identities: create, read, change, look up, resolve senders.

``resolve`` is the identity step of ingestion: an unknown sender gets a new customer.
Two first contacts from one new number may race (two processes on PostgreSQL); the
unique constraint on ``(kind, value)`` settles it: the loser's insert does nothing, it
reads the winner's customer and drops the one it had made, in the same transaction.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline import sqlite_direct
from timeline.db import DirectQuery
from timeline.errors import Conflict, InvalidIdentity, NotFound
from timeline.events import Identity, IdentityKind, utcnow
from timeline.ids import new_id, new_ids
from timeline.records import Customer
from timeline.schema import consents, customer_teams, customers, events, identities
from timeline.search import matching_customer_ids
from timeline.sql import chunks, insert_ignoring


def check_timezone(value: str | None, *, field: str = "timezone") -> str | None:
    """An IANA time zone name, or InvalidIdentity naming the field."""
    if value is None:
        return None
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidIdentity(field, f"unknown time zone {value!r}") from None
    return value


async def create(
    conn: AsyncConnection,
    *,
    name: str | None = None,
    timezone: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    ids: Sequence[Identity] = (),
) -> str:
    """Create a customer with normalized identities; Conflict if one is already taken."""
    now = utcnow()
    customer_id = new_id()
    await conn.execute(
        customers.insert().values(
            id=customer_id,
            name=name,
            timezone=check_timezone(timezone),
            attributes=dict(attributes or {}),
            created_at=now,
            updated_at=now,
        )
    )
    await _add_identities(conn, customer_id, ids)
    return customer_id


async def _add_identities(conn: AsyncConnection, customer_id: str, ids: Iterable[Identity]) -> None:
    now = utcnow()
    for identity in dict.fromkeys(ids):
        # Insert-or-nothing, then look: a concurrent claim of the same identity is settled
        # by the unique constraint, never by an unhandled IntegrityError.
        await conn.execute(
            insert_ignoring(conn, identities, ["kind", "value"]).values(
                id=new_id(),
                customer_id=customer_id,
                kind=identity.kind.value,
                value=identity.value,
                created_at=now,
            )
        )
        owner = await find(conn, identity)
        if owner != customer_id:
            raise Conflict(f"{identity.kind} identity already belongs to customer {owner}")


async def find(conn: AsyncConnection, identity: Identity) -> str | None:
    """The id of the customer with this (normalized) identity, if any."""
    result = await conn.execute(
        sa.select(identities.c.customer_id).where(
            identities.c.kind == identity.kind.value, identities.c.value == identity.value
        )
    )
    return result.scalar_one_or_none()


_INSERT_CUSTOMERS = sqlite_direct.Insert(customers)
_CLAIM_IDENTITIES = sqlite_direct.Insert(
    identities, "ON CONFLICT (kind, value) DO NOTHING RETURNING kind, value, customer_id"
)


async def resolve(conn: AsyncConnection, ids: Sequence[Identity]) -> dict[Identity, str]:
    """Customer ids for normalized identities, creating a customer for each unknown one."""
    # A fixed order of inserts keeps concurrent batches from deadlocking on PostgreSQL.
    wanted = sorted(dict.fromkeys(ids), key=lambda i: (i.kind, i.value))  # StrEnum: str order
    found: dict[Identity, str] = {}
    if not wanted:
        return found
    await _lookup(conn, wanted, found)
    missing = [i for i in wanted if i not in found]
    if not missing:
        return found
    now = utcnow()
    made = dict(zip(missing, new_ids(len(missing)), strict=True))
    # One dict for every row: the bind processor converts a value shared by consecutive
    # rows once (sqlite_direct.Insert), not a JSON dump per new customer.
    no_attributes: dict[str, Any] = {}
    customer_rows: list[dict[str, Any]] = [
        {
            "id": cid,
            "name": None,
            "timezone": None,
            "attributes": no_attributes,
            "created_at": now,
            "updated_at": now,
            "merged_into": None,
            "erased_at": None,
        }
        for cid in made.values()
    ]
    if await _INSERT_CUSTOMERS.many(conn, customer_rows) is None:
        await conn.execute(customers.insert(), customer_rows)
    identity_rows = [
        {
            "id": identity_id,
            "customer_id": cid,
            "kind": identity.kind.value,
            "value": identity.value,
            "created_at": now,
        }
        for (identity, cid), identity_id in zip(made.items(), new_ids(len(made)), strict=True)
    ]
    # RETURNING names the identities this insert claimed; only those another transaction
    # took meanwhile (rare) need a second look.
    claimed = await _CLAIM_IDENTITIES.returning(conn, identity_rows)
    if claimed is None:
        claimed = list(
            await conn.execute(
                insert_ignoring(conn, identities, ["kind", "value"]).returning(
                    identities.c.kind, identities.c.value, identities.c.customer_id
                ),
                identity_rows,
            )
        )
    asked = {(i.kind.value, i.value): i for i in missing}
    for kind, value, customer_id in claimed:
        found[asked[(kind, value)]] = customer_id
    raced = [i for i in missing if i not in found]
    if raced:
        await _lookup(conn, raced, found)
    orphans = [cid for identity, cid in made.items() if found.get(identity) != cid]
    if orphans:
        await conn.execute(customers.delete().where(customers.c.id.in_(orphans)))
    return found


_OWNERS = sa.select(identities.c.value, identities.c.customer_id).where(
    identities.c.kind == sa.bindparam("kind"),
    identities.c.value.in_(sa.bindparam("values", expanding=True)),
)


async def _lookup(
    conn: AsyncConnection, wanted: Sequence[Identity], found: dict[Identity, str]
) -> None:
    # The rows name the values asked for: map them back to the callers' Identity objects.
    by_kind: dict[IdentityKind, dict[str, Identity]] = {}
    for identity in wanted:
        by_kind.setdefault(identity.kind, {})[identity.value] = identity
    for kind, asked in by_kind.items():
        for part in chunks(list(asked)):
            direct = await sqlite_direct.rows(
                conn,
                sqlite_direct.in_list(
                    "SELECT value, customer_id FROM identities WHERE kind = ? AND value IN",
                    len(part),
                ),
                (kind.value, *part),
            )
            rows = (
                direct
                if direct is not None
                else await conn.execute(_OWNERS, {"kind": kind.value, "values": part})
            )
            for value, customer_id in rows:
                found[asked[value]] = customer_id


async def get(conn: AsyncConnection, customer_id: str) -> Customer:
    """A customer with identities, consent and event counts; NotFound if unknown."""
    row = (
        (await conn.execute(sa.select(customers).where(customers.c.id == customer_id)))
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise NotFound("customer", customer_id)
    phones: list[str] = []
    emails: list[str] = []
    handles: list[dict[str, str]] = []
    rows = await conn.execute(
        sa.select(identities.c.kind, identities.c.value)
        .where(identities.c.customer_id == customer_id)
        .order_by(identities.c.created_at, identities.c.id)
    )
    for kind, value in rows:
        if kind == IdentityKind.PHONE:
            phones.append(value)
        elif kind == IdentityKind.EMAIL:
            emails.append(value)
        else:
            network, _, ident = value.partition(":")
            handles.append({"network": network, "id": ident})
    consent_rows = await conn.execute(
        sa.select(consents).where(consents.c.customer_id == customer_id)
    )
    consent = [
        {
            "channel": c["channel"],
            "purpose": c["purpose"],
            "state": c["state"],
            "updated_at": c["updated_at"].isoformat().replace("+00:00", "Z"),
        }
        for c in consent_rows.mappings()
    ]
    count_rows = await conn.execute(
        sa.select(events.c.channel, sa.func.count())
        .where(events.c.customer_id == customer_id)
        .group_by(events.c.channel)
    )
    counts = {channel: int(n) for channel, n in count_rows}
    counts["total"] = sum(counts.values())
    return Customer(
        id=row["id"],
        name=row["name"],
        timezone=row["timezone"],
        attributes=row["attributes"] or {},
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        merged_into=row["merged_into"],
        erased_at=row["erased_at"],
        phones=phones,
        emails=emails,
        handles=handles,
        consent=consent,
        counts=counts,
    )


async def require_active(conn: AsyncConnection, customer_id: str) -> None:
    """NotFound unless the customer exists and is neither erased nor merged away."""
    row = (
        await conn.execute(
            sa.select(customers.c.merged_into, customers.c.erased_at).where(
                customers.c.id == customer_id
            )
        )
    ).one_or_none()
    if row is None or row.erased_at is not None:
        raise NotFound("customer", customer_id)
    if row.merged_into is not None:
        raise Conflict(f"customer {customer_id} was merged into {row.merged_into}")


_UNSET: Any = object()


async def update(
    conn: AsyncConnection,
    customer_id: str,
    *,
    name: str | None = _UNSET,
    timezone: str | None = _UNSET,
    attributes: Mapping[str, Any] | None = None,
    add: Sequence[Identity] = (),
    remove: Sequence[Identity] = (),
) -> None:
    """Change fields; ``attributes`` is a JSON merge patch (RFC 7396: null deletes a key)."""
    await require_active(conn, customer_id)
    values: dict[str, Any] = {"updated_at": utcnow()}
    if name is not _UNSET:
        values["name"] = name
    if timezone is not _UNSET:
        values["timezone"] = check_timezone(timezone)
    if attributes:
        current = (
            await conn.execute(
                sa.select(customers.c.attributes).where(customers.c.id == customer_id)
            )
        ).scalar_one()
        merged = merge_patch(current or {}, attributes)
        values["attributes"] = merged
    await conn.execute(customers.update().where(customers.c.id == customer_id).values(**values))
    for identity in remove:
        result = await conn.execute(
            identities.delete().where(
                identities.c.customer_id == customer_id,
                identities.c.kind == identity.kind.value,
                identities.c.value == identity.value,
            )
        )
        if result.rowcount == 0:
            raise NotFound(f"{identity.kind} identity", identity.value)
    await _add_identities(conn, customer_id, add)


async def search(
    conn: AsyncConnection,
    q: str,
    *,
    limit: int,
    offset: int,
    teams: frozenset[str] | None = None,
) -> list[str]:
    """Ids of active customers whose name, identity or message text matches ``q``.

    Names and identities match by substring (case-insensitive); messages by full-text
    search (``timeline.search``). Ordered by name, then id. Only customers visible to
    ``teams`` (see :func:`visible_to`).
    """
    pattern = f"%{_escape_like(q.strip().lower())}%"
    by_name = sa.select(customers.c.id).where(
        sa.func.lower(customers.c.name).like(pattern, escape="\\")
    )
    by_identity = sa.select(identities.c.customer_id).where(
        sa.func.lower(identities.c.value).like(pattern, escape="\\")
    )
    by_text = matching_customer_ids(conn.dialect.name, q)
    ids = sa.union(by_name, by_identity, by_text).subquery()
    query = (
        sa.select(customers.c.id)
        .where(
            customers.c.id.in_(sa.select(ids.c.id)),
            customers.c.erased_at.is_(None),
            customers.c.merged_into.is_(None),
            visible_to(teams),
        )
        .order_by(customers.c.name, customers.c.id)
        .limit(limit)
        .offset(offset)
    )
    return list((await conn.execute(query)).scalars())


async def recent(
    conn: AsyncConnection, *, limit: int, offset: int, teams: frozenset[str] | None = None
) -> list[str]:
    """Ids of active customers visible to ``teams``, most recently changed first."""
    query = (
        sa.select(customers.c.id)
        .where(
            customers.c.erased_at.is_(None),
            customers.c.merged_into.is_(None),
            visible_to(teams),
        )
        .order_by(customers.c.updated_at.desc(), customers.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list((await conn.execute(query)).scalars())


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7396 JSON merge patch of objects: null deletes a key, objects merge deeply."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge_patch(result[key], value)
        elif isinstance(value, Mapping):
            result[key] = merge_patch({}, value)
        else:
            result[key] = value
    return result


async def require_exists(conn: AsyncConnection, customer_id: str) -> None:
    """NotFound unless the customer exists and is not erased (merged ones exist)."""
    row = (
        await conn.execute(sa.select(customers.c.erased_at).where(customers.c.id == customer_id))
    ).one_or_none()
    if row is None or row.erased_at is not None:
        raise NotFound("customer", customer_id)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- teams: which agents see which customers (docs/security.md)


def visible_to(teams: frozenset[str] | None) -> sa.ColumnElement[bool]:
    """A condition on ``customers.c.id``: the customer is visible to agents of ``teams``.

    None sees every customer. Otherwise a customer without team rows (unassigned) is
    visible, and one with rows only when a row names one of ``teams``.
    """
    if teams is None:
        return sa.true()
    assigned = sa.exists().where(customer_teams.c.customer_id == customers.c.id)
    if not teams:
        return ~assigned
    ours = sa.exists().where(
        customer_teams.c.customer_id == customers.c.id,
        customer_teams.c.team.in_(sorted(teams)),
    )
    return sa.or_(~assigned, ours)


#: A customer's team rows (none: unassigned), for :func:`visible_among`.
TEAMS_OF = DirectQuery(
    sa.select(customer_teams.c.team).where(
        customer_teams.c.customer_id == sa.bindparam("customer_id", "")
    )
)


def visible_among(teams: frozenset[str] | None, assigned: Iterable[str]) -> bool:
    """:func:`visible_to`'s rule for a customer whose team rows are ``assigned``.

    For a check whose rows were read before the agent was known (``TEAMS_OF``, sent
    with the token lookup in one driver call). Whether the customer exists is not part
    of it (``is_visible`` also answers False for no customer).
    """
    if teams is None:
        return True
    rows = set(assigned)
    return not rows or not rows.isdisjoint(teams)


async def is_visible(conn: AsyncConnection, customer_id: str, teams: frozenset[str] | None) -> bool:
    """Whether the customer exists (in any state) and is visible to ``teams``."""
    if teams is None:
        return True
    query = sa.select(customers.c.id).where(customers.c.id == customer_id, visible_to(teams))
    return (await conn.execute(query)).first() is not None


async def require_visible(
    conn: AsyncConnection, customer_id: str, teams: frozenset[str] | None
) -> None:
    """NotFound for a customer that ``teams`` may not see (as for one that does not exist).

    A customer that does not exist passes here; the caller's own lookup answers that.
    """
    if teams is None:
        return
    row = (
        await conn.execute(
            sa.select(customers.c.id, visible_to(teams).label("visible")).where(
                customers.c.id == customer_id
            )
        )
    ).one_or_none()
    if row is not None and not row.visible:
        raise NotFound("customer", customer_id)


async def visible_ids(
    conn: AsyncConnection, customer_ids: Iterable[str], teams: frozenset[str] | None
) -> set[str]:
    """Those of ``customer_ids`` that ``teams`` may see."""
    wanted = list(dict.fromkeys(customer_ids))
    if teams is None:
        return set(wanted)
    found: set[str] = set()
    for part in chunks(wanted):
        rows = await conn.execute(
            sa.select(customers.c.id).where(customers.c.id.in_(part), visible_to(teams))
        )
        found.update(rows.scalars())
    return found


async def teams_of(conn: AsyncConnection, customer_id: str) -> list[str]:
    """The customer's teams, sorted (empty: unassigned, visible to every agent)."""
    rows = await conn.execute(
        sa.select(customer_teams.c.team)
        .where(customer_teams.c.customer_id == customer_id)
        .order_by(customer_teams.c.team)
    )
    return list(rows.scalars())


async def set_teams(conn: AsyncConnection, customer_id: str, teams: Iterable[str]) -> None:
    """Replace the customer's teams (an empty list unassigns)."""
    await require_active(conn, customer_id)
    await conn.execute(customer_teams.delete().where(customer_teams.c.customer_id == customer_id))
    wanted = sorted({t for t in teams})
    if wanted:
        await conn.execute(
            customer_teams.insert(), [{"customer_id": customer_id, "team": t} for t in wanted]
        )
