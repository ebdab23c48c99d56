"""Changing an agent's console password, which ends every console session of the agent.

OWASP ASVS 5.0 V6.2.2/V6.2.3 (a change needs the current password; an admin's reset of
another agent's does not) and V7.4.3 (sessions end when the password changes,
https://cheatsheetseries.owasp.org/cheatsheets/Session_Management_Cheat_Sheet.html#renew-the-session-id-after-any-privilege-level-change).

The documented choice: a change ends **every** console session of the agent, the
current one included. The console page that makes the change then starts a fresh
session for its own browser (a new id, as after a login), so the agent who changed
their password stays logged in there and nowhere else. API tokens are separate
credentials and stay valid (revoke them with ``DELETE /api/v1/agents/me/tokens/{id}``).
Every change is audited as ``password.change`` (by the agent) or ``password.reset``
(by an admin or the command line), with the number of sessions ended; never the
password.
"""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from hub import audit
from hub.auth import check_password, hash_password
from timeline.schema import agents, console_sessions

#: ASVS 5.0 V6.2.1 (at least 8) and V6.2.9 (at least 64 allowed); Argon2 takes any length.
MIN_LENGTH = 8
MAX_LENGTH = 256


class PasswordError(ValueError):
    """A password that cannot be set (too short, too long, the same as the email)."""


class WrongPassword(Exception):
    """The current password given does not match."""


class UnknownAgent(LookupError):
    """No (active) agent with this id or email."""


@dataclasses.dataclass(frozen=True, slots=True)
class Changed:
    """What a change did."""

    agent_id: str
    sessions_ended: int


def check_new(password: str, email: str | None = None) -> None:
    """PasswordError unless ``password`` may be set (length; not the account's email)."""
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"the password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordError(f"the password must have at most {MAX_LENGTH} characters")
    if email and password.strip().lower() == email.strip().lower():
        raise PasswordError("the password must not be the email address")


async def set_password(
    conn: AsyncConnection,
    agent_id: str,
    new_password: str,
    *,
    current_password: str | None = None,
    actor_id: str | None = None,
    ip: str | None = None,
) -> Changed:
    """Set an agent's password and end all their console sessions, in ``conn``'s transaction.

    With ``current_password`` (the agent's own change) it must match, else WrongPassword;
    without it, this is a reset (admin or command line). Audited in the same transaction.
    """
    row = (
        await conn.execute(
            sa.select(agents.c.email, agents.c.password_hash).where(
                agents.c.id == agent_id, agents.c.disabled_at.is_(None)
            )
        )
    ).one_or_none()
    if row is None:
        raise UnknownAgent(agent_id)
    if current_password is not None and not check_password(row.password_hash, current_password):
        raise WrongPassword
    check_new(new_password, row.email)
    await conn.execute(
        agents.update()
        .where(agents.c.id == agent_id)
        .values(password_hash=hash_password(new_password))
    )
    ended = (
        await conn.execute(console_sessions.delete().where(console_sessions.c.agent_id == agent_id))
    ).rowcount
    own = current_password is not None
    await audit.record(
        conn,
        "password.change" if own else "password.reset",
        agent_id=actor_id,
        detail={"agent": agent_id, "sessions_ended": ended},
        ip=ip,
    )
    return Changed(agent_id, ended)


async def agent_id_for_email(conn: AsyncConnection, email: str) -> str:
    """The id of the active agent with this email (any case), else UnknownAgent."""
    found = (
        await conn.execute(
            sa.select(agents.c.id).where(
                sa.func.lower(agents.c.email) == email.strip().lower(),
                agents.c.disabled_at.is_(None),
            )
        )
    ).scalar_one_or_none()
    if found is None:
        raise UnknownAgent(email)
    return str(found)
