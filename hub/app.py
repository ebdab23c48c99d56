"""The application: ``create_app(settings)`` builds the Starlette app.

Its lifespan owns the database engine, the file store, the live publisher and the
background workers: it applies migrations, starts the workers (unless told not to) and
closes everything on shutdown.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from config import Settings
from hub import openapi, twilio_webhooks, ui, voice
from hub.api import agents, audit, calls, customers, health, messages, privacy, stream, timeline
from hub.audit import install_log_escaping
from hub.errors import error_body
from hub.routing import Endpoint, to_routes
from hub.security import HardenedStarlette
from hub.services import Services
from hub.workers import Workers
from timeline import migrate
from timeline.db import Database

log = logging.getLogger(__name__)

ENDPOINTS: list[Endpoint] = [
    *health.ENDPOINTS,
    *customers.ENDPOINTS,
    *timeline.ENDPOINTS,
    *privacy.ENDPOINTS,
    *messages.ENDPOINTS,
    *stream.ENDPOINTS,
    *calls.ENDPOINTS,
    *audit.ENDPOINTS,
    *agents.ENDPOINTS,
]

#: API paths tried right after the webhooks (see create_app).
HOT_PATHS = frozenset({"/api/v1/customers/{id}/timeline"})


def version() -> str:
    """The installed version of commhub."""
    try:
        return metadata.version("commhub")
    except metadata.PackageNotFoundError:
        return "0.0.0+source"


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def index(request: Request) -> Response:
    """Where things are."""
    return JSONResponse(
        {
            "name": "commhub",
            "version": version(),
            "api": "/api/v1",
            "openapi": "/openapi.json",
            "health": "/healthz",
        }
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal", "internal server error"), status_code=500)


@contextlib.asynccontextmanager
async def _sandbox(settings: Settings) -> AsyncIterator[None]:
    """The built-in Twilio sandbox on loopback at TWILIO_API_BASE (demo mode)."""
    from urllib.parse import urlsplit

    from channels.twilio.sandbox import Sandbox, run_sandbox

    assert settings.twilio_account_sid and settings.twilio_auth_token
    where = urlsplit(settings.twilio_api_base)
    sandbox = Sandbox(
        settings.twilio_account_sid,
        settings.twilio_auth_token,
        settings.public_url,
        numbers=settings.twilio_numbers,
    )
    async with run_sandbox(sandbox, where.hostname or "127.0.0.1", where.port or 80):
        log.info("twilio sandbox serving at %s", settings.twilio_api_base)
        yield


def create_app(
    settings: Settings,
    *,
    run_workers: bool = True,
    db: Database | None = None,
    sse_heartbeat: float = 15.0,
) -> Starlette:
    """The hub as an ASGI app; its lifespan migrates, starts workers and cleans up.

    Every answer carries the security headers of ``hub.security``; log lines escape
    control characters (``hub.audit``).
    """
    install_log_escaping()
    services = Services.build(settings, db)
    schema_cache: dict[str, Any] = {}
    webhook_routes: list[BaseRoute] = [*twilio_webhooks.ROUTES, *voice.ROUTES]

    async def openapi_json(request: Request) -> Response:
        if not schema_cache:
            schema_cache.update(
                openapi.build(
                    ENDPOINTS,
                    version=version(),
                    server_url=settings.public_url,
                    webhooks=[
                        (r.path, (r.endpoint.__doc__ or r.path).strip().splitlines()[0])
                        for r in webhook_routes
                        if isinstance(r, Route)
                    ],
                )
            )
        return JSONResponse(schema_cache)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await migrate.upgrade(services.db)
        services.writer.start()
        async with contextlib.AsyncExitStack() as stack:
            if settings.twilio_sandbox:
                await stack.enter_async_context(_sandbox(settings))
            workers = Workers(services) if run_workers else None
            if workers:
                workers.start()
            log.info("commhub %s serving at %s", version(), settings.public_url)
            # What startup made lives as long as the process: out of the garbage
            # collector's way (https://docs.python.org/3/library/gc.html#gc.freeze), or each
            # full collection scans it again, 50-70 ms on the event loop that every request
            # in flight waits for (measured: twenty screen pops at once). Unfrozen on the
            # way out, so an app stopped in a longer-lived process (tests) is collected.
            gc.freeze()
            try:
                yield
            finally:
                gc.unfreeze()
                if workers:
                    await workers.stop()
                await services.close()

    # Webhooks first: Starlette tries routes in order, one regex each, and providers post
    # far more often than agents call the API (the SMS route was the 27th of 36: ~10 us
    # a webhook, timeit). Then the agents' hottest read, the timeline (it was the 18th:
    # ~6 us of misses a page). Neither path can match another route's pattern, so the
    # order changes no match (tests/hub/test_routes.py).
    api = to_routes(ENDPOINTS, _services)
    hot = [r for r in api if isinstance(r, Route) and r.path in HOT_PATHS]
    routes: list[BaseRoute] = [
        *webhook_routes,
        *hot,
        Route("/", index, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *(r for r in api if r not in hot),
    ]
    routes += ui.routes()  # the agent console (hub/ui), under /ui
    app = HardenedStarlette(
        https=settings.public_url.lower().startswith("https://"),
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.services = services
    app.state.settings = settings
    app.state.sse_heartbeat = sse_heartbeat
    app.state.console = ui.console(services)
    return app
