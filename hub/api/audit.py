"""The audit log for admins: ``GET /api/v1/audit`` (OWASP ASVS 5.0 V16)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from hub import schemas
from hub.routing import Ctx, Endpoint, Param, int_param
from timeline import audit


class AuditEntry(BaseModel):
    """One audit record: who did what to which customer, when, from where."""

    id: str
    at: str
    agent_id: str | None
    action: str
    customer_id: str | None
    detail: dict[str, Any]
    ip: str | None


class AuditPage(BaseModel):
    """Audit records, newest first."""

    items: list[AuditEntry]
    next: str | None


async def list_audit(ctx: Ctx) -> Response:
    """Audit records, newest first, by keyset pages on (at, id); filters combine."""
    params = ctx.request.query_params
    limit = int_param(ctx.request, "limit", 50, 1, audit.MAX_PAGE)
    async with ctx.services.db.read() as conn:
        items, nxt = await audit.page(
            conn,
            customer_id=params.get("customer_id") or None,
            agent_id=params.get("agent_id") or None,
            action=params.get("action") or None,
            cursor=params.get("cursor") or None,
            limit=limit,
        )
    return JSONResponse({"items": items, "next": nxt})


_ERR = schemas.Error

ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/audit",
        list_audit,
        "The audit log: denials, exports, erasures, merges, token and role changes",
        "admin",
        {
            200: ("a page of records, newest first", AuditPage),
            400: ("bad cursor", _ERR),
            401: ("no valid token", _ERR),
            403: ("needs the admin role", _ERR),
            422: ("an invalid limit", _ERR),
        },
        params=(
            Param("customer_id", "query", {"type": "string"}, "records about this customer"),
            Param("agent_id", "query", {"type": "string"}, "records of this agent's actions"),
            Param("action", "query", {"type": "string"}, "e.g. customer.export"),
            Param(
                "limit",
                "query",
                {"type": "integer", "minimum": 1, "maximum": audit.MAX_PAGE},
                "page size (default 50)",
            ),
            Param("cursor", "query", {"type": "string"}, "from the previous page's next"),
        ),
        tag="audit",
    ),
]
