"""Idempotency keys as Stripe does them (timeline.idempotency, RELIABILITY 33)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline import customers as customer_ops
from timeline import idempotency
from timeline.db import Database
from timeline.errors import IdempotencyMismatch
from timeline.events import Identity, IdentityKind, utcnow
from timeline.idempotency import Answer, AnswerError, fingerprint
from timeline.schema import customers, idempotency_keys

from .conftest import count

Operation = Callable[[AsyncConnection], Awaitable[Answer]]

FP = fingerprint("POST", "/api/v1/customers", b'{"name": "Ada"}')


def creating(name: str, calls: list[str], *, pause: float = 0.0) -> Operation:
    """An operation that inserts a customer and answers 201 with its id."""

    async def operation(conn: AsyncConnection) -> Answer:
        customer_id = await customer_ops.create(conn, name=name)
        calls.append(customer_id)
        if pause:
            await asyncio.sleep(pause)
        return Answer(201, {"id": customer_id, "name": name})

    return operation


def test_fingerprint() -> None:
    base = fingerprint("POST", "/a", b"{}")
    assert fingerprint("post", "/a", b"{}") == base
    assert fingerprint("PUT", "/a", b"{}") != base
    assert fingerprint("POST", "/b", b"{}") != base
    assert fingerprint("POST", "/a", b"{ }") != base
    # Parts are length-prefixed: moving bytes between path and body changes the print.
    assert fingerprint("POST", "/ab", b"c") != fingerprint("POST", "/a", b"bc")
    assert len(base) == 64


async def test_replay_returns_the_stored_answer(db: Database) -> None:
    calls: list[str] = []
    first, replayed = await idempotency.run(db, "agent-1", "key-1", FP, creating("Ada", calls))
    assert replayed is False
    assert first.status == 201
    assert first.body == {"id": calls[0], "name": "Ada"}
    again, replayed = await idempotency.run(db, "agent-1", "key-1", FP, creating("Ada", calls))
    assert replayed is True
    assert again == first
    assert len(calls) == 1
    assert await count(db, customers) == 1
    # Another scope or another key is another request.
    other, replayed = await idempotency.run(db, "agent-2", "key-1", FP, creating("Ada", calls))
    assert replayed is False and other != first
    _, replayed = await idempotency.run(db, "agent-1", "key-2", FP, creating("Ada", calls))
    assert replayed is False
    assert await count(db, customers) == 3
    assert await count(db, idempotency_keys) == 3
    # The same key with another request is refused, and runs nothing.
    other_fp = fingerprint("POST", "/api/v1/customers", b'{"name": "Eve"}')
    with pytest.raises(IdempotencyMismatch):
        await idempotency.run(db, "agent-1", "key-1", other_fp, creating("Eve", calls))
    assert len(calls) == 3
    assert await count(db, customers) == 3


async def test_error_answer_is_stored_and_replayed(db: Database) -> None:
    calls: list[str] = []

    async def refuse(conn: AsyncConnection) -> Answer:
        calls.append("ran")
        raise AnswerError(Answer(422, {"error": {"code": "invalid", "message": "no"}}))

    answer, replayed = await idempotency.run(db, "s", "k", FP, refuse)
    assert (answer.status, answer.body, replayed) == (
        422,
        {"error": {"code": "invalid", "message": "no"}},
        False,
    )
    again, replayed = await idempotency.run(db, "s", "k", FP, creating("Ada", []))
    assert again == answer and replayed is True
    assert calls == ["ran"]
    with pytest.raises(IdempotencyMismatch):
        await idempotency.run(db, "s", "k", "other", refuse)

    # Any other exception stores nothing: the key stays free for a retry.
    async def crash(conn: AsyncConnection) -> Answer:
        await customer_ops.create(conn, name="half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await idempotency.run(db, "s", "k2", FP, crash)
    assert await count(db, customers) == 0
    assert await count(db, idempotency_keys) == 1
    _, replayed = await idempotency.run(db, "s", "k2", FP, creating("Ada", []))
    assert replayed is False
    assert await count(db, customers) == 1


async def test_error_answer_rolls_back_the_effects(db: Database) -> None:
    async def half_done(conn: AsyncConnection) -> Answer:
        await customer_ops.create(conn, name="should vanish")
        raise AnswerError(Answer(409, {"error": {"code": "conflict", "message": "x"}}))

    answer, _ = await idempotency.run(db, "s", "k", FP, half_done)
    assert answer.status == 409
    assert await count(db, customers) == 0


async def _concurrent(runs: list[Database]) -> list[tuple[Answer, bool]]:
    calls: list[str] = []
    results = await asyncio.gather(
        *(idempotency.run(d, "s", "same-key", FP, creating("Ada", calls, pause=0.05)) for d in runs)
    )
    return list(results)


def _exactly_one_effect(results: list[tuple[Answer, bool]]) -> None:
    answers = {(a.status, a.body["id"]) for a, _ in results}
    assert len(answers) == 1
    assert sorted(replayed for _, replayed in results) == [False] + [True] * (len(results) - 1)


async def test_concurrent_duplicates_have_one_effect(db: Database) -> None:
    results = await _concurrent([db] * 10)
    _exactly_one_effect(results)
    assert await count(db, customers) == 1


async def test_concurrent_duplicates_from_separate_pools_have_one_effect(
    db: Database, make_db: Callable[[], Database]
) -> None:
    results = await _concurrent([make_db() for _ in range(10)])
    _exactly_one_effect(results)
    assert await count(db, customers) == 1
    async with db.read() as conn:
        [customer_id] = (await conn.execute(sa.select(customers.c.id))).scalars().all()
    assert results[0][0].body["id"] == customer_id


async def test_concurrent_duplicates_whose_effect_is_unique(
    request: pytest.FixtureRequest, db: Database, make_db: Callable[[], Database]
) -> None:
    """POST /customers with an email and an Idempotency-Key, sent twice at once."""

    async def create_with_email(conn: AsyncConnection) -> Answer:
        customer_id = await customer_ops.create(
            conn, name="Ada", ids=[Identity(IdentityKind.EMAIL, "ada@example.com")]
        )
        await asyncio.sleep(0.05)
        return Answer(201, {"id": customer_id})

    pools = [make_db() for _ in range(5)]
    results = await asyncio.gather(
        *(idempotency.run(p, "s", "k", FP, create_with_email) for p in pools),
        return_exceptions=True,
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    _exactly_one_effect([r for r in results if not isinstance(r, BaseException)])
    assert await count(db, customers) == 1


async def test_expire_forgets_old_keys(db: Database) -> None:
    calls: list[str] = []
    await idempotency.run(db, "s", "old", FP, creating("Ada", calls))
    await idempotency.run(db, "s", "new", FP, creating("Ada", calls))
    assert await idempotency.expire(db, timedelta(hours=24)) == 0
    # Two days pass for the old key.
    async with db.write() as conn:
        await conn.execute(
            idempotency_keys.update()
            .where(idempotency_keys.c.key == "old")
            .values(created_at=utcnow() - timedelta(days=2))
        )
    assert await idempotency.expire(db, timedelta(hours=24)) == 1
    assert await count(db, idempotency_keys) == 1
    # A forgotten key runs again; a kept one still replays.
    _, replayed = await idempotency.run(db, "s", "old", FP, creating("Ada", calls))
    assert replayed is False
    _, replayed = await idempotency.run(db, "s", "new", FP, creating("Ada", calls))
    assert replayed is True
    assert len(calls) == 3
