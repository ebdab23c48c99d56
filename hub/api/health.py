"""Health: whether the hub and its database answer."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse, Response

from hub import schemas
from hub.errors import error_body
from hub.routing import Ctx, Endpoint

log = logging.getLogger(__name__)


async def healthz(ctx: Ctx) -> Response:
    """200 when the database answers, 503 when it does not (no auth)."""
    try:
        await ctx.services.db.ping()
    except Exception as exc:  # any driver error means "not healthy"
        log.warning("health check failed: %s", type(exc).__name__)
        return JSONResponse(error_body("unavailable", "the database does not answer"), 503)
    return JSONResponse({"status": "ok"})


ENDPOINTS = [
    Endpoint(
        "GET",
        "/healthz",
        healthz,
        "Health: 200 when the database answers",
        None,
        {
            200: ("healthy", schemas.Health),
            503: ("the database does not answer", schemas.Error),
        },
        tag="health",
    ),
]
