"""The agent console: server-rendered pages (Jinja2 + htmx + SSE), served under ``/ui``.

``mount(services)`` gives the routes for ``hub.app``; see docs/console.md.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from hub.services import Services
from hub.sessions import SessionStore
from hub.ui import account, live, views
from hub.ui.guard import Console, SecurityHeaders
from hub.ui.render import STATIC, environment


def console(services: Services) -> Console:
    """The console's shared state (put on ``app.state.console``)."""
    return Console(services=services, sessions=SessionStore(services.db), templates=environment())


def routes() -> list[BaseRoute]:
    """The console's routes, all under ``/ui`` with its security headers."""
    pages: list[BaseRoute] = [
        Route("/", views.home, methods=["GET"]),
        Route("/login", views.login_form, methods=["GET"]),
        Route("/login", views.login, methods=["POST"]),
        Route("/logout", views.logout, methods=["POST"]),
        Route("/account/password", account.password_form, methods=["GET"]),
        Route("/account/password", account.change_password, methods=["POST"]),
        Route("/search", views.search, methods=["GET"]),
        Route("/calls", views.calls_page, methods=["GET"]),
        Route("/calls/{id}/recording", views.recording, methods=["GET"]),
        Route("/stream", live.stream, methods=["GET"]),
        Route("/customers/{id}", views.customer_page, methods=["GET"]),
        Route("/customers/{id}/timeline", views.timeline_page, methods=["GET"]),
        Route("/customers/{id}/send", views.send, methods=["POST"]),
        Route("/customers/{id}/identities", views.edit_identities, methods=["POST"]),
        Route("/customers/{id}/attributes", views.edit_attributes, methods=["POST"]),
        Route("/customers/{id}/merge", views.merge, methods=["POST"]),
        Route("/merges/{id}/undo", views.undo_merge, methods=["POST"]),
        Route("/events/{id}/email", views.email_view, methods=["GET"]),
        Route("/events/{id}/body", views.email_body, methods=["GET"]),
        Route("/sandbox", live.sandbox_page, methods=["GET"]),
        Route("/sandbox/sms", live.sandbox_sms, methods=["POST"]),
        Route("/sandbox/call", live.sandbox_call, methods=["POST"]),
        Route("/sandbox/phone", live.sandbox_phone, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="ui-static"),
    ]
    return [Mount("/ui", routes=pages, middleware=[Middleware(SecurityHeaders)])]
