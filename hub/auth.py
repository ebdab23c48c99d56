"""Agents and their credentials: API tokens (stored hashed) and console passwords.

Tokens are 256 random bits; only their SHA-256 is stored (a fast hash is right for
high-entropy secrets, https://cheatsheetseries.owasp.org/cheatsheets/Password_Storage_Cheat_Sheet.html).
Passwords are hashed with Argon2id. Roles, from least to most: agent, supervisor, admin.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.db import Database, DirectQuery, Statement
from timeline.errors import Conflict
from timeline.events import utcnow
from timeline.ids import new_id
from timeline.schema import agents, api_tokens

ROLES = ("agent", "supervisor", "admin")
TOKEN_PREFIX = "chub_"  # noqa: S105 - a public prefix, not a secret
_hasher = PasswordHasher()


@dataclasses.dataclass(frozen=True, slots=True)
class Agent:
    """An authenticated agent."""

    id: str
    email: str
    name: str | None
    role: str
    team: str | None
    token_id: str | None = None

    def has_role(self, role: str) -> bool:
        """Whether this agent's role is ``role`` or above."""
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_token(token: str) -> str:
    """What is stored for a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    """An Argon2id hash of a password."""
    return _hasher.hash(password)


def check_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches the stored hash."""
    if not stored:
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


async def add_agent(
    conn: AsyncConnection,
    *,
    email: str,
    role: str,
    name: str | None = None,
    team: str | None = None,
    password: str | None = None,
) -> tuple[str, str]:
    """Create an agent and a first API token; returns (agent id, token)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    taken = await conn.execute(sa.select(agents.c.id).where(agents.c.email == email))
    if taken.first() is not None:
        raise Conflict(f"an agent with the email {email} already exists")
    agent_id = new_id()
    await conn.execute(
        agents.insert().values(
            id=agent_id,
            email=email,
            name=name,
            role=role,
            team=team,
            password_hash=hash_password(password) if password else None,
            created_at=utcnow(),
        )
    )
    return agent_id, await issue_token(conn, agent_id)


async def issue_token(conn: AsyncConnection, agent_id: str) -> str:
    """A new API token for an agent (shown once, stored hashed)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(
        api_tokens.insert().values(
            id=new_id(), agent_id=agent_id, token_hash=hash_token(token), created_at=utcnow()
        )
    )
    return token


#: The active agent holding a token (by its hash): built once, sent through the driver.
_BY_TOKEN_HASH = DirectQuery(
    sa.select(
        agents.c.id,
        agents.c.email,
        agents.c.name,
        agents.c.role,
        agents.c.team,
        api_tokens.c.id.label("token_id"),
    )
    .join(agents, agents.c.id == api_tokens.c.agent_id)
    .where(
        api_tokens.c.token_hash == sa.bindparam("token_hash", ""),
        api_tokens.c.revoked_at.is_(None),
        agents.c.disabled_at.is_(None),
    )
)


class TokenAuth:
    """Looks bearer tokens up; records last use at most once a minute per token.

    Every lookup asks the database (no cache), so a revoked token or a disabled agent
    is refused from the next request on, in every process.
    """

    def __init__(self, db: Database, touch_every: float = 60.0) -> None:
        self.db = db
        self.touch_every = touch_every
        self._touched: dict[str, float] = {}

    async def agent_for(self, token: str) -> Agent | None:
        """The active agent holding this token, or None (in a read transaction of its own)."""
        if not _plausible(token):
            return None
        async with self.db.read() as conn:
            agent = await self.lookup(conn, token)
        if agent is not None:
            await self.touch(agent)
        return agent

    async def lookup(self, conn: AsyncConnection, token: str) -> Agent | None:
        """The active agent holding this token, read in ``conn``'s transaction, or None.

        The caller records the use with :meth:`touch` once its transaction has ended.
        """
        if not _plausible(token):
            return None
        return agent_of(await _BY_TOKEN_HASH.rows(conn, token_hash=hash_token(token)))

    @staticmethod
    def lookup_statement(dialect: sa.Dialect, token: str) -> Statement | None:
        """The token lookup as driver SQL (``Database.fetch_each``), None if implausible.

        Its rows go to :func:`agent_of`; as with :meth:`lookup`, the caller records the
        use with :meth:`touch`.
        """
        if not _plausible(token):
            return None
        return _BY_TOKEN_HASH.statement_for(dialect, token_hash=hash_token(token))

    async def touch(self, agent: Agent) -> None:
        """Record the token's last use, if this process has not in the last minute."""
        if agent.token_id is None:
            return
        now = time.monotonic()
        if now - self._touched.get(agent.token_id, -1e9) <= self.touch_every:
            return
        self._touched[agent.token_id] = now
        async with self.db.write() as conn:
            await conn.execute(
                api_tokens.update()
                .where(api_tokens.c.id == agent.token_id)
                .values(last_used_at=utcnow())
            )


def agent_of(rows: list[Any]) -> Agent | None:
    """The agent in the rows of the token lookup, or None."""
    if not rows:
        return None
    row = rows[0]
    return Agent(row[0], row[1], row[2], row[3], row[4], row[5])


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer`` header value, or None."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _plausible(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX) and len(token) <= 200
