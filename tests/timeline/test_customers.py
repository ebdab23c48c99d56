"""Customers: create, change, look up, and search by name, identity and message words."""

from __future__ import annotations

import pytest

from timeline import customers as customer_ops
from timeline.db import Database
from timeline.errors import Conflict, InvalidIdentity, NotFound
from timeline.events import Identity, IdentityKind
from timeline.ingest import ingest

from .conftest import REGION, email_in, note, phone, sms_in

PHONE = IdentityKind.PHONE
EMAIL = IdentityKind.EMAIL
HANDLE = IdentityKind.HANDLE


async def test_create_get_update(db: Database) -> None:
    async with db.write() as conn:
        customer_id = await customer_ops.create(
            conn,
            name="Ada Lovelace",
            timezone="Europe/London",
            attributes={"tier": "gold", "seats": 3},
            ids=[
                Identity(PHONE, phone(1)),
                Identity(EMAIL, "ada@example.com"),
                Identity(HANDLE, "telegram:42"),
                Identity(PHONE, phone(1)),  # repeated: stored once
            ],
        )
    async with db.read() as conn:
        customer = await customer_ops.get(conn, customer_id)
    assert customer.name == "Ada Lovelace"
    assert customer.timezone == "Europe/London"
    assert customer.attributes == {"tier": "gold", "seats": 3}
    assert customer.phones == [phone(1)]
    assert customer.emails == ["ada@example.com"]
    assert customer.handles == [{"network": "telegram", "id": "42"}]
    assert customer.counts == {"total": 0}
    assert customer.merged_into is None and customer.erased_at is None
    assert customer.to_json()["created_at"].endswith("Z")

    async with db.write() as conn:
        await customer_ops.update(
            conn,
            customer_id,
            name="Ada King",
            attributes={"tier": None, "plan": "pro"},  # RFC 7396: null deletes
            add=[Identity(EMAIL, "ada@king.example")],
            remove=[Identity(HANDLE, "telegram:42")],
        )
    async with db.read() as conn:
        changed = await customer_ops.get(conn, customer_id)
    assert changed.name == "Ada King"
    assert changed.timezone == "Europe/London"  # untouched
    assert changed.attributes == {"seats": 3, "plan": "pro"}
    assert changed.emails == ["ada@example.com", "ada@king.example"]
    assert changed.handles == []
    assert changed.updated_at >= customer.updated_at

    async with db.write() as conn:
        await customer_ops.update(conn, customer_id, name=None)
        assert (await customer_ops.get(conn, customer_id)).name is None


async def test_identity_conflicts_and_errors(db: Database) -> None:
    async with db.write() as conn:
        first = await customer_ops.create(conn, ids=[Identity(PHONE, phone(1))])
        second = await customer_ops.create(conn)
    with pytest.raises(Conflict):
        async with db.write() as conn:
            await customer_ops.create(conn, name="dup", ids=[Identity(PHONE, phone(1))])
    with pytest.raises(Conflict):
        async with db.write() as conn:
            await customer_ops.update(conn, second, add=[Identity(PHONE, phone(1))])
    with pytest.raises(NotFound):
        async with db.write() as conn:
            await customer_ops.update(conn, second, remove=[Identity(PHONE, phone(1))])
    with pytest.raises(InvalidIdentity) as info:
        async with db.write() as conn:
            await customer_ops.create(conn, timezone="Mars/Olympus")
    assert info.value.field == "timezone"
    with pytest.raises(NotFound):
        async with db.read() as conn:
            await customer_ops.get(conn, "nope")
    with pytest.raises(NotFound):
        async with db.write() as conn:
            await customer_ops.update(conn, "nope", name="x")
    async with db.read() as conn:
        assert await customer_ops.find(conn, Identity(PHONE, phone(1))) == first
        assert await customer_ops.find(conn, Identity(PHONE, phone(2))) is None
        # Nothing of the failed transactions stayed.
        assert (await customer_ops.get(conn, second)).phones == []
        # Most recently changed first.
        assert await customer_ops.recent(conn, limit=10, offset=0) == [second, first]
        assert await customer_ops.recent(conn, limit=1, offset=1) == [first]

    # resolve() creates customers only for unknown identities.
    known = first
    async with db.write() as conn:
        wanted = [
            Identity(PHONE, phone(1)),
            Identity(PHONE, phone(2)),
            Identity(EMAIL, "x@y.example"),
        ]
        resolved = await customer_ops.resolve(conn, wanted + wanted)
    assert set(resolved) == set(wanted)
    assert resolved[wanted[0]] == known
    assert len({resolved[w] for w in wanted}) == 3
    async with db.write() as conn:
        assert await customer_ops.resolve(conn, wanted) == resolved
        assert await customer_ops.resolve(conn, []) == {}


async def _people(db: Database) -> dict[str, str]:
    async with db.write() as conn:
        ids = {
            "ada": await customer_ops.create(
                conn, name="Ada Lovelace", ids=[Identity(EMAIL, "ada@analytical.example")]
            ),
            "grace": await customer_ops.create(
                conn, name="Grace Hopper", ids=[Identity(PHONE, "+14155550177")]
            ),
            "alan": await customer_ops.create(
                conn, name="Alan Turing", ids=[Identity(HANDLE, "telegram:enigma_42")]
            ),
        }
    await ingest(db, [sms_in("+14155550177", text="The pineapple shipment arrived")], region=REGION)
    await ingest(db, [note(ids["ada"], "Discussed the difference engine")], region=REGION)
    [unnamed] = (
        await ingest(
            db, [email_in("someone@else.example", subject="Pineapple order")], region=REGION
        )
    ).outcomes
    assert unnamed.event
    ids["unnamed"] = unnamed.event.customer_id
    return ids


async def test_search_by_name_identity_and_words(db: Database) -> None:
    ids = await _people(db)

    async def search(q: str) -> set[str]:
        async with db.read() as conn:
            return set(await customer_ops.search(conn, q, limit=50, offset=0))

    # Name: substring, case-insensitive.
    assert await search("lovelace") == {ids["ada"]}
    assert await search("HOPPER") == {ids["grace"]}
    assert await search("  grace ") == {ids["grace"]}
    assert await search("a") >= {ids["ada"], ids["grace"], ids["alan"]}
    # Identity substrings.
    assert await search("555017") == {ids["grace"]}
    assert await search("+14155550177") == {ids["grace"]}
    assert await search("analytical.example") == {ids["ada"]}
    assert await search("enigma") == {ids["alan"]}
    assert await search("someone@") == {ids["unnamed"]}
    # Message words (full-text search over subject and text).
    assert await search("pineapple") == {ids["grace"], ids["unnamed"]}
    assert await search("PINEAPPLE shipment") == {ids["grace"]}
    assert await search("engine") == {ids["ada"]}
    assert await search("difference engine") == {ids["ada"]}
    # LIKE wildcards in input are literal; odd input is no error.
    assert await search("%") == set()
    assert await search("_") >= {ids["alan"]}  # telegram:enigma_42 has a literal underscore
    assert await search("a_a") == set()
    assert await search("nothing-like-this") == set()
    for q in ['"', "'", "\\", "OR", "NEAR(", "*"]:
        await search(q)
    # Offset pages, ordered by name.
    async with db.read() as conn:
        named = await customer_ops.search(conn, "a", limit=50, offset=0)
        first = await customer_ops.search(conn, "a", limit=2, offset=0)
        rest = await customer_ops.search(conn, "a", limit=50, offset=2)
    assert first + rest == named
    by_name = [i for i in named if i in (ids["ada"], ids["alan"], ids["grace"])]
    assert by_name == [ids["ada"], ids["alan"], ids["grace"]]


async def test_search_skips_merged_and_erased_customers(db: Database) -> None:
    from timeline import merge as merge_ops
    from timeline import privacy

    ids = await _people(db)
    async with db.write() as conn:
        await merge_ops.merge(conn, ids["ada"], ids["alan"])
        await privacy.erase(conn, ids["grace"])
    async with db.read() as conn:
        assert await customer_ops.search(conn, "turing", limit=10, offset=0) == []
        # Alan's handle now belongs to Ada.
        assert await customer_ops.search(conn, "enigma", limit=10, offset=0) == [ids["ada"]]
        assert await customer_ops.search(conn, "hopper", limit=10, offset=0) == []
        assert await customer_ops.search(conn, "shipment", limit=10, offset=0) == []
        recent = await customer_ops.recent(conn, limit=10, offset=0)
    assert set(recent) == {ids["ada"], ids["unnamed"]}


async def test_search_by_non_ascii_name(request: pytest.FixtureRequest, db: Database) -> None:
    async with db.write() as conn:
        emile = await customer_ops.create(conn, name="Émile Zola")
        asa = await customer_ops.create(conn, name="Åsa Öberg")
    async with db.read() as conn:
        assert await customer_ops.search(conn, "Émile", limit=10, offset=0) == [emile]
        assert await customer_ops.search(conn, "émile", limit=10, offset=0) == [emile]
        assert await customer_ops.search(conn, "åsa öberg", limit=10, offset=0) == [asa]


async def test_search_by_mixed_case_email_identity(
    request: pytest.FixtureRequest, db: Database
) -> None:
    async with db.write() as conn:
        jane = await customer_ops.create(conn, ids=[Identity(EMAIL, "Jane.Doe@example.com")])
    async with db.read() as conn:
        assert await customer_ops.search(conn, "Jane.Doe", limit=10, offset=0) == [jane]
        assert await customer_ops.search(conn, "jane.doe@example", limit=10, offset=0) == [jane]


async def test_visible_among_agrees_with_is_visible(db: Database) -> None:
    assignments = {"a": ["A"], "ab": ["A", "B"], "b": ["B"], "open": []}
    ids: list[str] = []
    async with db.write() as conn:
        for name, teams in assignments.items():
            ids.append(await customer_ops.create(conn, name=name))
            await customer_ops.set_teams(conn, ids[-1], teams)
    async with db.read() as conn:
        for cid in ids:
            assigned = [r[0] for r in await customer_ops.TEAMS_OF.rows(conn, customer_id=cid)]
            for scope in (None, frozenset(), frozenset({"A"}), frozenset({"B", "C"})):
                expected = await customer_ops.is_visible(conn, cid, scope)
                assert customer_ops.visible_among(scope, assigned) == expected, (cid, scope)
