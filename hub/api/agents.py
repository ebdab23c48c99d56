"""Agents: who am I, my API tokens (list, issue, revoke), passwords, and role changes by admins.

Tokens (OWASP ASVS 5.0 V7 / V9): shown once when issued, stored as SHA-256 only
(``hub.auth``), revocable at once (the next request with a revoked token is 401, as
every request looks its token up). Issued tokens are never answered through the
Idempotency-Key store, which would keep the secret in plain text. Issue, revoke and
role changes are audited.

Passwords (``hub.passwords``): an agent changes their own with the current one (wrong
guesses count against the login throttle of the account, ``hub.throttle``: 429 with
``Retry-After`` once blocked); an admin resets another agent's. Either ends every console
session of that agent; API tokens stay valid.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from hub import audit, passwords, schemas, throttle
from hub.auth import hash_token, issue_token
from hub.errors import ApiError, error_body
from hub.routing import Ctx, Endpoint, Param
from timeline.events import utcnow
from timeline.identity import normalize_phone
from timeline.records import iso
from timeline.schema import agents, api_tokens

MAX_TOKENS = 50


class AgentOut(BaseModel):
    """An agent (no credentials)."""

    id: str
    email: str
    name: str | None
    role: str
    team: str | None
    phone: str | None = Field(default=None, description="rung first by click-to-call (E.164)")


class TokenOut(BaseModel):
    """An API token's metadata (never the token)."""

    id: str
    created_at: str
    last_used_at: str | None = Field(description="updated at most once a minute")
    revoked_at: str | None
    current: bool = Field(description="the token of this request")


class TokenList(BaseModel):
    """The agent's tokens, newest first."""

    items: list[TokenOut]
    next: str | None


class TokenIssued(BaseModel):
    """A new token: shown once, keep it."""

    id: str
    token: str
    created_at: str


class AgentPatch(BaseModel):
    """An admin's change to an agent."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["agent", "supervisor", "admin"] | None = None
    team: str | None = Field(default=None, min_length=1, max_length=100)
    phone: str | None = Field(
        default=None, min_length=3, max_length=32, description="click-to-call rings it first"
    )


class PasswordChange(BaseModel):
    """An agent's change of their own password."""

    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(max_length=passwords.MAX_LENGTH)
    new_password: str = Field(
        min_length=passwords.MIN_LENGTH,
        max_length=passwords.MAX_LENGTH,
        description="at least 8 characters, not the email address",
    )


class PasswordReset(BaseModel):
    """An admin's reset of another agent's password."""

    model_config = ConfigDict(extra="forbid")

    new_password: str = Field(min_length=passwords.MIN_LENGTH, max_length=passwords.MAX_LENGTH)


class PasswordChanged(BaseModel):
    """The change is done: every console session of the agent has ended."""

    agent_id: str
    sessions_ended: int


def _throttled(seconds: int) -> Response:
    body = error_body("too_many_attempts", throttle.retry_message(seconds))
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(seconds)})


async def change_my_password(ctx: Ctx) -> Response:
    """Change my console password (needs the current one); ends all my console sessions.

    Wrong current passwords count as failed logins of the account: after too many, 429.
    """
    body = await ctx.body(PasswordChange)
    db = ctx.services.db
    ip = audit.client_ip(ctx.request)
    keys = throttle.keys_for(ctx.agent.email, ip)
    wait = await throttle.blocked_for(db, keys)
    if wait:
        return _throttled(wait)
    try:
        async with db.write() as conn:
            changed = await passwords.set_password(
                conn,
                ctx.agent.id,
                body.new_password,
                current_password=body.current_password,
                actor_id=ctx.agent.id,
                ip=ip,
            )
    except passwords.WrongPassword:
        wait = await throttle.record_failure(db, keys)
        await ctx.audit(db, "password.change.failed", detail={"agent": ctx.agent.id})
        if wait:
            return _throttled(wait)
        raise ApiError(
            422, "wrong_password", "the current password is wrong", field="current_password"
        ) from None
    except passwords.PasswordError as exc:
        raise ApiError(422, "invalid_field", str(exc), field="new_password") from None
    return JSONResponse({"agent_id": changed.agent_id, "sessions_ended": changed.sessions_ended})


async def reset_password(ctx: Ctx) -> Response:
    """Set another agent's console password (admin; audited); ends all their console sessions."""
    body = await ctx.body(PasswordReset)
    agent_id = ctx.path("id")
    if agent_id == ctx.agent.id:
        raise ApiError(
            409, "conflict", "change your own password with POST /api/v1/agents/me/password"
        )
    try:
        async with ctx.services.db.write() as conn:
            changed = await passwords.set_password(
                conn,
                agent_id,
                body.new_password,
                actor_id=ctx.agent.id,
                ip=audit.client_ip(ctx.request),
            )
    except passwords.UnknownAgent:
        raise ApiError(404, "not_found", f"no agent {agent_id!r}") from None
    except passwords.PasswordError as exc:
        raise ApiError(422, "invalid_field", str(exc), field="new_password") from None
    return JSONResponse({"agent_id": changed.agent_id, "sessions_ended": changed.sessions_ended})


async def me(ctx: Ctx) -> Response:
    """The agent of this token."""
    agent = ctx.agent
    return JSONResponse(
        {
            "id": agent.id,
            "email": agent.email,
            "name": agent.name,
            "role": agent.role,
            "team": agent.team,
        }
    )


async def list_tokens(ctx: Ctx) -> Response:
    """My API tokens (revoked ones too), newest first, with when each was last used."""
    async with ctx.services.db.read() as conn:
        rows = await conn.execute(
            sa.select(api_tokens)
            .where(api_tokens.c.agent_id == ctx.agent.id)
            .order_by(api_tokens.c.created_at.desc(), api_tokens.c.id.desc())
        )
        items = [
            {
                "id": r.id,
                "created_at": iso(r.created_at),
                "last_used_at": iso(r.last_used_at),
                "revoked_at": iso(r.revoked_at),
                "current": r.id == ctx.agent.token_id,
            }
            for r in rows
        ]
    return JSONResponse({"items": items, "next": None})


async def create_token(ctx: Ctx) -> Response:
    """A new API token for me (answered once; only its hash is stored)."""
    async with ctx.services.db.write() as conn:
        active = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(api_tokens)
                .where(api_tokens.c.agent_id == ctx.agent.id, api_tokens.c.revoked_at.is_(None))
            )
        ).scalar_one()
        if active >= MAX_TOKENS:
            raise ApiError(409, "too_many_tokens", f"at most {MAX_TOKENS} active tokens")
        token = await issue_token(conn, ctx.agent.id)
        row = (
            await conn.execute(
                sa.select(api_tokens.c.id, api_tokens.c.created_at).where(
                    api_tokens.c.token_hash == hash_token(token)
                )
            )
        ).one()
        await ctx.audit(conn, "token.issue", detail={"token_id": row.id})
    return JSONResponse(
        {"id": row.id, "token": token, "created_at": iso(row.created_at)},
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


async def revoke_token(ctx: Ctx) -> Response:
    """Revoke one of my tokens: the next request with it is 401."""
    token_id = ctx.path("id")
    async with ctx.services.db.write() as conn:
        found = (
            await conn.execute(
                sa.select(api_tokens.c.revoked_at).where(
                    api_tokens.c.id == token_id, api_tokens.c.agent_id == ctx.agent.id
                )
            )
        ).one_or_none()
        if found is None:
            raise ApiError(404, "not_found", f"no token {token_id!r} of yours")
        if found.revoked_at is None:
            await conn.execute(
                api_tokens.update().where(api_tokens.c.id == token_id).values(revoked_at=utcnow())
            )
            await ctx.audit(conn, "token.revoke", detail={"token_id": token_id})
    return Response(status_code=204)


async def patch_agent(ctx: Ctx) -> Response:
    """Change an agent's role or team (admin; audited). Admins cannot demote themselves."""
    body = await ctx.body(AgentPatch)
    agent_id = ctx.path("id")
    async with ctx.services.db.write() as conn:
        row = (await conn.execute(sa.select(agents).where(agents.c.id == agent_id))).one_or_none()
        if row is None:
            raise ApiError(404, "not_found", f"no agent {agent_id!r}")
        values: dict[str, str | None] = {}
        if body.role is not None and body.role != row.role:
            if agent_id == ctx.agent.id:
                raise ApiError(409, "conflict", "an admin cannot change their own role")
            values["role"] = body.role
        if "team" in body.model_fields_set and body.team != row.team:
            values["team"] = body.team
        if "phone" in body.model_fields_set:
            region = ctx.services.settings.default_region
            phone = normalize_phone(body.phone, region) if body.phone is not None else None
            if phone != row.phone:
                values["phone"] = phone
        if values:
            await conn.execute(agents.update().where(agents.c.id == agent_id).values(**values))
            await ctx.audit(
                conn,
                "agent.role" if "role" in values else "agent." + next(iter(values)),
                detail={
                    "agent": agent_id,
                    **{f"{k}_from": getattr(row, k) for k in values},
                    **{f"{k}_to": v for k, v in values.items()},
                },
            )
        changed = (await conn.execute(sa.select(agents).where(agents.c.id == agent_id))).one()
    return JSONResponse(
        {
            "id": changed.id,
            "email": changed.email,
            "name": changed.name,
            "role": changed.role,
            "team": changed.team,
            "phone": changed.phone,
        }
    )


_ERR = schemas.Error
_TOKEN_ID = Param("id", "path", {"type": "string"}, "the token's id", required=True)

ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/agents/me",
        me,
        "The agent of this token",
        "agent",
        {200: ("the agent", AgentOut), 401: ("no valid token", _ERR)},
        tag="agents",
    ),
    Endpoint(
        "GET",
        "/api/v1/agents/me/tokens",
        list_tokens,
        "My API tokens, with when each was last used",
        "agent",
        {200: ("the tokens, newest first", TokenList), 401: ("no valid token", _ERR)},
        tag="agents",
    ),
    Endpoint(
        "POST",
        "/api/v1/agents/me/tokens",
        create_token,
        "Issue a new API token for me (shown once)",
        "agent",
        {
            201: ("the token", TokenIssued),
            401: ("no valid token", _ERR),
            409: ("too many active tokens", _ERR),
        },
        tag="agents",
    ),
    Endpoint(
        "DELETE",
        "/api/v1/agents/me/tokens/{id}",
        revoke_token,
        "Revoke one of my tokens (the next request with it is 401)",
        "agent",
        {
            204: ("revoked", None),
            401: ("no valid token", _ERR),
            404: ("no such token of mine", _ERR),
        },
        params=(_TOKEN_ID,),
        tag="agents",
    ),
    Endpoint(
        "POST",
        "/api/v1/agents/me/password",
        change_my_password,
        "Change my console password (ends all my console sessions)",
        "agent",
        {
            200: ("changed; every console session of mine has ended", PasswordChanged),
            400: ("malformed JSON", _ERR),
            401: ("no valid token", _ERR),
            422: (
                "the current password is wrong (`wrong_password`), a new password too short "
                "or too long, or an invalid field",
                _ERR,
            ),
            429: ("too many wrong passwords: see Retry-After", _ERR),
        },
        body=PasswordChange,
        tag="agents",
    ),
    Endpoint(
        "POST",
        "/api/v1/agents/{id}/password",
        reset_password,
        "Reset another agent's console password (ends all their console sessions; audited)",
        "admin",
        {
            200: ("reset; every console session of the agent has ended", PasswordChanged),
            400: ("malformed JSON", _ERR),
            401: ("no valid token", _ERR),
            403: ("needs the admin role", _ERR),
            404: ("no such agent", _ERR),
            409: ("an admin's own password (use /agents/me/password)", _ERR),
            422: ("a new password too short or too long, or an invalid field", _ERR),
        },
        body=PasswordReset,
        params=(Param("id", "path", {"type": "string"}, "the agent's id", required=True),),
        tag="agents",
    ),
    Endpoint(
        "PATCH",
        "/api/v1/agents/{id}",
        patch_agent,
        "Change an agent's role, team or phone (audited)",
        "admin",
        {
            200: ("the agent now", AgentOut),
            400: ("malformed JSON", _ERR),
            401: ("no valid token", _ERR),
            403: ("needs the admin role", _ERR),
            404: ("no such agent", _ERR),
            409: ("an admin changing their own role", _ERR),
            422: ("an invalid field", _ERR),
        },
        body=AgentPatch,
        params=(Param("id", "path", {"type": "string"}, "the agent's id", required=True),),
        tag="agents",
    ),
]
