"""What guards every console page: the session, CSRF, and the security headers.

``console`` wraps a page handler: it finds the session of the cookie (else a redirect to
the login page, or 401 for htmx and the stream), and for unsafe methods checks the
request's ``Origin`` and CSRF token (403 otherwise) before the handler runs.
``SecurityHeaders`` puts the console's CSP and friends on every ``/ui`` answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub import sessions
from hub.services import Services
from hub.sessions import Session, SessionStore

#: The console's policy: nothing from elsewhere, no inline script or style, no plugins,
#: never framed. ``frame-src 'self'`` admits the sandboxed email iframes (srcdoc ones are
#: not fetched; the "show images" one is served from /ui).
CONSOLE_CSP = (
    "default-src 'self'; img-src 'self' data:; frame-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


@dataclasses.dataclass
class Console:
    """What console handlers share: services, sessions and templates."""

    services: Services
    sessions: SessionStore
    templates: Any  # jinja2.Environment

    @property
    def cookie(self) -> str:
        """The session cookie's name."""
        return sessions.cookie_name(self.services.settings.public_url)

    def allowed_origins(self, request: Request) -> list[str]:
        """The hub's own origins: its public URL and the address this request came to."""
        return [
            sessions.origin_of(self.services.settings.public_url),
            sessions.origin_of(str(request.base_url)),
        ]

    def render(
        self,
        request: Request,
        name: str,
        status: int = 200,
        session: Session | None = None,
        **context: Any,
    ) -> HTMLResponse:
        """A template as an HTML answer."""
        settings = self.services.settings
        body = self.templates.get_template(name).render(
            request=request,
            session=session,
            agent=session.agent if session else None,
            csrf=session.csrf_token if session else "",
            sandbox=settings.twilio_sandbox,
            **context,
        )
        return HTMLResponse(body, status_code=status)


Handler = Callable[[Request, Session], Awaitable[Response]]


def console_of(request: Request) -> Console:
    """The console of the app."""
    console: Console = request.app.state.console
    return console


def refused(request: Request, status: int, message: str) -> Response:
    """A short refusal (403 for CSRF/origin, 401 for no session)."""
    console = console_of(request)
    return console.render(request, "error.html", status=status, message=message)


async def check_csrf(request: Request, session_token: str) -> tuple[bool, FormData | None]:
    """Whether the request's origin and CSRF token are right; the parsed form if any."""
    console = console_of(request)
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not sessions.same_origin(origin, console.allowed_origins(request)):
        return False, None
    token = request.headers.get(sessions.CSRF_HEADER)
    form = None
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        field = form.get(sessions.CSRF_FIELD)
        if token is None and isinstance(field, str):
            token = field
    return sessions.tokens_equal(token, session_token), form


def console(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a page handler with the session and CSRF checks."""

    async def call(request: Request) -> Response:
        c = console_of(request)
        session = await c.sessions.get(request.cookies.get(c.cookie))
        if session is None:
            if (
                request.headers.get("hx-request")
                or request.method != "GET"
                or request.url.path.endswith("/stream")
            ):
                response: Response = refused(request, 401, "Your session ended: log in again.")
                response.headers["HX-Redirect"] = "/ui/login"
                return response
            return RedirectResponse("/ui/login", status_code=303)
        if request.method in sessions.UNSAFE_METHODS:
            ok, form = await check_csrf(request, session.csrf_token)
            if not ok:
                return refused(request, 403, "The request was refused (CSRF check failed).")
            request.state.form = form
        return await handler(request, session)

    call.__name__ = handler.__name__
    call.__doc__ = handler.__doc__
    return call


async def form_of(request: Request) -> FormData:
    """The request's form (parsed once, by the CSRF check)."""
    form = getattr(request.state, "form", None)
    if isinstance(form, FormData):
        return form
    return await request.form()


def field(form: FormData, name: str) -> str:
    """A text field of a form, stripped ('' when absent)."""
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


class SecurityHeaders:
    """ASGI middleware: the console's security headers on every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = {
                    b"x-content-type-options": b"nosniff",
                    b"referrer-policy": b"same-origin",
                    b"x-frame-options": b"DENY",
                }
                if b"content-security-policy" not in names:
                    extra[b"content-security-policy"] = CONSOLE_CSP.encode()
                if not path.startswith("/ui/static/"):
                    extra[b"cache-control"] = b"no-store"
                for key, value in extra.items():
                    if key not in names:
                        headers.append((key, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


def redirect(request: Request, to: str) -> Response:
    """A redirect that htmx follows as a full page load."""
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": to})
    return RedirectResponse(to, status_code=303)
