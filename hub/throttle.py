"""Login throttling, kept in the database so every hub process sees the same counts.

OWASP ASVS 5.0 V6.3.1 and the Authentication Cheat Sheet
(https://cheatsheetseries.owasp.org/cheatsheets/Authentication_Cheat_Sheet.html#login-throttling):
failed logins are counted per account (the SHA-256 of the lower-cased email, so the
table holds no address) and per client address, in a fixed window of
:data:`WINDOW`. At :data:`ACCOUNT_LIMIT` failures for one account, or
:data:`ADDRESS_LIMIT` from one address, further logins for that key are refused for
:data:`BLOCK` without checking the password, answered ``429 Too Many Requests`` with
``Retry-After`` (RFC 6585 section 4, RFC 9110 section 10.2.3). A successful login clears
the account's count (not the address's: one good password must not reset a spray from
that address). Blocks are temporary, so a stranger can lock an account out for at
most :data:`BLOCK` at a time; the per-address limit is higher, as offices share one.

Counting is one ``INSERT ... ON CONFLICT DO NOTHING`` and one ``UPDATE ... SET failures =
failures + 1`` per key, atomic under concurrent processes on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from hub import audit
from timeline.db import Database
from timeline.events import utcnow
from timeline.schema import login_throttle
from timeline.sql import insert_ignoring

WINDOW = timedelta(minutes=15)
BLOCK = timedelta(minutes=15)
ACCOUNT_LIMIT = 5
ADDRESS_LIMIT = 20


def account_key(email: str) -> str:
    """The throttle key of an account (no address is stored)."""
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    return f"account:{digest}"


def address_key(ip: str | None) -> str | None:
    """The throttle key of a client address (None when the address is unknown)."""
    return f"ip:{ip[:100]}" if ip else None


def keys_for(email: str, ip: str | None) -> list[str]:
    """The keys one login attempt counts against."""
    address = address_key(ip)
    return [account_key(email), *([address] if address else [])]


def _limit(key: str) -> int:
    return ACCOUNT_LIMIT if key.startswith("account:") else ADDRESS_LIMIT


def _seconds(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))


async def blocked_for(db: Database, keys: Sequence[str], *, now: datetime | None = None) -> int:
    """Seconds until a login for these keys is allowed again (0: allowed now)."""
    now = now or utcnow()
    async with db.read() as conn:
        until = (
            await conn.execute(
                sa.select(sa.func.max(login_throttle.c.blocked_until)).where(
                    login_throttle.c.key.in_(list(keys)), login_throttle.c.blocked_until > now
                )
            )
        ).scalar_one_or_none()
    if until is None:
        return 0
    if until.tzinfo is None:  # SQLite's max() comes back as a naive UTC value
        until = until.replace(tzinfo=now.tzinfo)
    return _seconds(until - now)


async def record_failure(db: Database, keys: Sequence[str], *, now: datetime | None = None) -> int:
    """Count a failed login against each key; seconds blocked from now (0: not blocked)."""
    now = now or utcnow()
    window_start = now - WINDOW
    blocked = 0
    async with db.write() as conn:
        for key in keys:
            await conn.execute(
                insert_ignoring(conn, login_throttle, ["key"]).values(
                    key=key, failures=0, first_at=now, blocked_until=None
                )
            )
            expired = login_throttle.c.first_at <= window_start
            await conn.execute(
                login_throttle.update()
                .where(login_throttle.c.key == key)
                .values(
                    failures=sa.case((expired, 1), else_=login_throttle.c.failures + 1),
                    first_at=sa.case((expired, now), else_=login_throttle.c.first_at),
                )
            )
            failures = (
                await conn.execute(
                    sa.select(login_throttle.c.failures).where(login_throttle.c.key == key)
                )
            ).scalar_one()
            if failures >= _limit(key):
                await conn.execute(
                    login_throttle.update()
                    .where(login_throttle.c.key == key)
                    .values(blocked_until=now + BLOCK)
                )
                blocked = _seconds(BLOCK)
        await conn.execute(
            login_throttle.delete().where(
                login_throttle.c.first_at <= window_start,
                sa.or_(
                    login_throttle.c.blocked_until.is_(None),
                    login_throttle.c.blocked_until <= now,
                ),
            )
        )
    return blocked


async def record_success(db: Database, email: str) -> None:
    """A successful login clears the account's count."""
    async with db.write() as conn:
        await conn.execute(
            login_throttle.delete().where(login_throttle.c.key == account_key(email))
        )


def retry_message(seconds: int) -> str:
    """What the login page says to a throttled agent."""
    minutes = max(1, math.ceil(seconds / 60))
    unit = "minute" if minutes == 1 else "minutes"
    return f"Too many failed logins. Try again in {minutes} {unit}."


# -- the console's login, throttled and audited ----------------------------------------------


async def login_refusal(db: Database, request: Request, email: str) -> int:
    """Before checking a password: seconds the login must wait (0: go on).

    A refused attempt is audited as ``login.throttled`` and not counted again.
    """
    ip = audit.client_ip(request)
    wait = await blocked_for(db, keys_for(email, ip))
    if wait:
        await audit.record(db, "login.throttled", detail={"retry_after": wait}, ip=ip)
    return wait


async def login_failed(
    db: Database, request: Request, email: str, agent_id: str | None, *, reason: str
) -> int:
    """A wrong password or unknown account: audited (never the password, nor the email
    typed, which may be a password typed in the wrong field); seconds now blocked."""
    ip = audit.client_ip(request)
    wait = await record_failure(db, keys_for(email, ip))
    detail: dict[str, object] = {"reason": reason}
    if wait:
        detail["blocked_for"] = wait
    await audit.record(db, "login.failed", agent_id=agent_id, detail=detail, ip=ip)
    return wait


async def login_succeeded(db: Database, request: Request, email: str, agent_id: str) -> None:
    """A good password: the account's count is cleared, the login audited."""
    await record_success(db, email)
    await audit.record(db, "login", agent_id=agent_id, ip=audit.client_ip(request))


def too_many(response: Response, seconds: int) -> Response:
    """``response`` (a 429 page or answer) with its ``Retry-After`` in seconds."""
    response.headers["Retry-After"] = str(seconds)
    return response
