"""Idempotency keys for writes, as Stripe does them.

https://docs.stripe.com/api/idempotent_requests: the first answer for a key is stored
and replayed, errors included; the same key with other parameters is an error.

The key's row is inserted in the same transaction as the write's effect. Two requests
with one key at once: on SQLite they are serialized; on PostgreSQL the second's insert
waits on the unique index, finds the first's row, rolls its own effect back and replays
the stored answer. Either way there is exactly one effect.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.db import Database
from timeline.errors import IdempotencyMismatch, TimelineError
from timeline.events import utcnow
from timeline.schema import idempotency_keys
from timeline.sql import insert_ignoring


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """A stored answer: status code and JSON body."""

    status: int
    body: Any


class AnswerError(Exception):
    """Raised by an operation to answer with an error; its effects are rolled back."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


class _Raced(Exception):
    pass


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What identifies a request for the key check: method, path and body."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


async def _stored(conn: AsyncConnection, scope: str, key: str) -> sa.RowMapping | None:
    result = await conn.execute(
        sa.select(idempotency_keys).where(
            idempotency_keys.c.scope == scope, idempotency_keys.c.key == key
        )
    )
    return result.mappings().one_or_none()


def _replay(row: sa.RowMapping, fp: str) -> Answer:
    if row["fingerprint"] != fp:
        raise IdempotencyMismatch("this Idempotency-Key was used with a different request")
    return Answer(row["status_code"], row["response"])


async def _record(conn: AsyncConnection, scope: str, key: str, fp: str, answer: Answer) -> bool:
    result = await conn.execute(
        insert_ignoring(conn, idempotency_keys, ["scope", "key"]).values(
            scope=scope,
            key=key,
            fingerprint=fp,
            status_code=answer.status,
            response=json.loads(json.dumps(answer.body)),
            created_at=utcnow(),
        )
    )
    return bool(result.rowcount == 1)


async def run(
    db: Database,
    scope: str,
    key: str,
    fp: str,
    operation: Callable[[AsyncConnection], Awaitable[Answer]],
) -> tuple[Answer, bool]:
    """Run ``operation`` once per ``(scope, key)``; returns (answer, replayed).

    ``operation`` runs in a write transaction; raising :class:`AnswerError` rolls its
    effects back and stores that error answer. A stored key with another fingerprint
    raises :class:`IdempotencyMismatch`.
    """
    for _ in range(2):
        try:
            async with db.write() as conn:
                row = await _stored(conn, scope, key)
                if row is not None:
                    return _replay(row, fp), True
                # An AnswerError leaves this block, so the transaction rolls back.
                answer = await operation(conn)
                if not await _record(conn, scope, key, fp, answer):
                    raise _Raced
                return answer, False
        except _Raced:
            continue
        except AnswerError as exc:
            error = exc.answer
        except (TimelineError, sa.exc.IntegrityError):
            # A concurrent duplicate's effect collided with ours: if that request has
            # stored its answer by now, this one is a replay of it.
            async with db.read() as conn:
                row = await _stored(conn, scope, key)
            if row is None:
                raise
            return _replay(row, fp), True
        # The operation failed and its effects are gone: store the error alone.
        async with db.write() as conn:
            if await _record(conn, scope, key, fp, error):
                return error, False
            row = await _stored(conn, scope, key)
            assert row is not None
            return _replay(row, fp), True
    async with db.read() as conn:
        row = await _stored(conn, scope, key)
    if row is None:
        raise RuntimeError("idempotency key vanished while racing")
    return _replay(row, fp), True


async def expire(db: Database, older_than: timedelta) -> int:
    """Forget keys older than ``older_than``; returns how many."""
    async with db.write() as conn:
        result = await conn.execute(
            idempotency_keys.delete().where(idempotency_keys.c.created_at < utcnow() - older_than)
        )
        return int(result.rowcount)
