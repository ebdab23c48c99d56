"""Server-side sessions of the agent console, and their CSRF protection.

A session is a random 256-bit value in a cookie; the database holds only its SHA-256
(as for API tokens, ``hub.auth``), the agent, the session's CSRF token and three times:
created, last seen and the absolute expiry. A session ends after ``IDLE`` without a
request, at ``ABSOLUTE`` after login whatever the activity, or at logout (the row is
deleted). Login always makes a new session (no fixation: a value planted before login
is never promoted). ``last_seen_at`` is written at most once per ``TOUCH_EVERY``, so a
busy console does not write on every request.

The cookie (https://developer.mozilla.org/docs/Web/HTTP/Cookies#cookie_prefixes) is
``__Host-commhub_session`` with ``Secure`` when ``HUB_PUBLIC_URL`` is https, else
``commhub_session``; always ``HttpOnly``, ``SameSite=Lax``, ``Path=/``, no ``Domain``.

CSRF (https://cheatsheetseries.owasp.org/cheatsheets/Cross-Site_Request_Forgery_Prevention_Cheat_Sheet.html):
every POST/PATCH/PUT/DELETE needs the session's token (form field ``csrf_token`` or header
``X-CSRF-Token``, compared in constant time) and an ``Origin`` (else ``Referer``) that is
the hub's own. The login form, before any session exists, uses a double-submit cookie.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import sqlalchemy as sa

from hub.auth import Agent
from timeline.db import Database
from timeline.events import utcnow
from timeline.schema import agents, console_sessions

IDLE = timedelta(minutes=30)
ABSOLUTE = timedelta(hours=12)
TOUCH_EVERY = timedelta(minutes=1)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


def cookie_name(public_url: str) -> str:
    """The session cookie's name: the ``__Host-`` prefix when served over https."""
    return "__Host-commhub_session" if is_https(public_url) else "commhub_session"


def is_https(public_url: str) -> bool:
    """Whether the hub is reached over https (cookies are then ``Secure``)."""
    return urlsplit(public_url).scheme == "https"


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def tokens_equal(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two tokens (False if either is missing)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    """A live console session and its agent."""

    id_hash: str
    agent: Agent
    csrf_token: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


class SessionStore:
    """Creates, finds, touches and ends console sessions (``clock`` is for tests)."""

    def __init__(
        self,
        db: Database,
        *,
        idle: timedelta = IDLE,
        absolute: timedelta = ABSOLUTE,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.idle = idle
        self.absolute = absolute
        self.clock = clock
        self._last_purge = 0.0

    async def create(self, agent_id: str) -> str:
        """A new session for the agent; returns the cookie value (shown once)."""
        value = secrets.token_urlsafe(32)
        now = self.clock()
        async with self.db.write() as conn:
            await conn.execute(
                console_sessions.insert().values(
                    id_hash=_hash(value),
                    agent_id=agent_id,
                    csrf_token=secrets.token_urlsafe(32),
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + self.absolute,
                )
            )
        await self._purge(now)
        return value

    async def get(self, value: str | None, *, touch: bool = True) -> Session | None:
        """The live session of a cookie value, or None (unknown, expired, agent disabled).

        ``touch=False`` (the live stream's periodic check) does not count as activity.
        """
        if not value or len(value) > 200:
            return None
        id_hash = _hash(value)
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        console_sessions,
                        agents.c.email,
                        agents.c.name,
                        agents.c.role,
                        agents.c.team,
                        agents.c.disabled_at,
                    )
                    .join(agents, agents.c.id == console_sessions.c.agent_id)
                    .where(console_sessions.c.id_hash == id_hash)
                )
            ).one_or_none()
        if row is None:
            return None
        now = self.clock()
        if (
            row.disabled_at is not None
            or now >= row.expires_at
            or now - row.last_seen_at >= self.idle
        ):
            await self.end(value)
            return None
        last_seen = row.last_seen_at
        if touch and now - last_seen >= TOUCH_EVERY:
            last_seen = now
            async with self.db.write() as conn:
                await conn.execute(
                    console_sessions.update()
                    .where(console_sessions.c.id_hash == id_hash)
                    .values(last_seen_at=now)
                )
        agent = Agent(row.agent_id, row.email, row.name, row.role, row.team)
        return Session(id_hash, agent, row.csrf_token, row.created_at, last_seen, row.expires_at)

    async def end(self, value: str | None) -> None:
        """End the session of a cookie value (logout); nothing if there is none."""
        if not value:
            return
        async with self.db.write() as conn:
            await conn.execute(
                console_sessions.delete().where(console_sessions.c.id_hash == _hash(value))
            )

    async def _purge(self, now: datetime) -> None:
        """Delete sessions past their expiry or idle limit (at most once a minute)."""
        if time.monotonic() - self._last_purge < 60:
            return
        self._last_purge = time.monotonic()
        async with self.db.write() as conn:
            await conn.execute(
                console_sessions.delete().where(
                    sa.or_(
                        console_sessions.c.expires_at <= now,
                        console_sessions.c.last_seen_at <= now - self.idle,
                    )
                )
            )


def same_origin(origin: str | None, allowed: list[str]) -> bool:
    """Whether an ``Origin`` (or a ``Referer`` URL) is one of ``allowed`` origins."""
    if not origin or origin == "null":
        return False
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc:
        return False
    return f"{parts.scheme}://{parts.netloc}".lower() in allowed


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower-cased."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()
