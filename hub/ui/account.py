"""The console's "Change password" page (``/ui/account/password``).

The change needs the current password (wrong ones count against the account's login
throttle, ``hub.throttle``: a 429 page with ``Retry-After`` once blocked) and ends every
console session of the agent (``hub.passwords``). This browser then gets a fresh
session, with a new id and CSRF token, so the agent stays logged in here only.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from hub import audit, passwords, sessions, throttle
from hub.sessions import Session
from hub.ui.guard import console, console_of, form_of
from hub.ui.views import page

TEMPLATE = "account_password.html"


def _raw(form: Any, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def _form(request: Request, session: Session, status: int = 200, **context: Any) -> Response:
    return await page(
        request,
        session,
        TEMPLATE,
        status,
        min_length=passwords.MIN_LENGTH,
        max_length=passwords.MAX_LENGTH,
        **{"error": "", "done": False, **context},
    )


@console
async def password_form(request: Request, session: Session) -> Response:
    """The form."""
    return await _form(request, session)


@console
async def change_password(request: Request, session: Session) -> Response:
    """Check the current password, set the new one, end every session, start a new one here."""
    c = console_of(request)
    db = c.services.db
    form = await form_of(request)
    current = _raw(form, "current_password")
    new = _raw(form, "new_password")
    if new != _raw(form, "confirm_password"):
        return await _form(request, session, 422, error="The new passwords differ.")
    ip = audit.client_ip(request)
    keys = throttle.keys_for(session.agent.email, ip)
    wait = await throttle.blocked_for(db, keys)
    if wait:
        refused = await _form(request, session, 429, error=throttle.retry_message(wait))
        return throttle.too_many(refused, wait)
    try:
        async with db.write() as conn:
            await passwords.set_password(
                conn,
                session.agent.id,
                new,
                current_password=current,
                actor_id=session.agent.id,
                ip=ip,
            )
    except passwords.WrongPassword:
        wait = await throttle.record_failure(db, keys)
        await audit.record(
            db,
            "password.change.failed",
            agent_id=session.agent.id,
            detail={"agent": session.agent.id},
            ip=ip,
        )
        if wait:
            refused = await _form(request, session, 429, error=throttle.retry_message(wait))
            return throttle.too_many(refused, wait)
        return await _form(request, session, 422, error="The current password is wrong.")
    except passwords.PasswordError as exc:
        return await _form(request, session, 422, error=f"{str(exc).capitalize()}.")
    value = await c.sessions.create(session.agent.id)
    fresh = await c.sessions.get(value)
    assert fresh is not None
    response = await _form(request, fresh, done=True)
    public_url = c.services.settings.public_url
    response.set_cookie(
        c.cookie,
        value,
        max_age=int(c.sessions.absolute.total_seconds()),
        path="/",
        secure=sessions.is_https(public_url),
        httponly=True,
        samesite="lax",
    )
    return response
