"""Customers: search, exact lookup, create, read, change, merge and undo a merge."""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import JSONResponse, Response

from hub import schemas
from hub.errors import ApiError
from hub.routing import Ctx, Endpoint, Param, int_param
from timeline import customers as customer_ops
from timeline import merge as merge_ops
from timeline.events import Identity, IdentityKind
from timeline.idempotency import Answer
from timeline.identity import normalize_email, normalize_handle, normalize_phone


def _offset_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _read_offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = raw.partition(":")
        offset = int(value)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad_cursor", "not a valid cursor") from None
    if kind != "o" or offset < 0:
        raise ApiError(400, "bad_cursor", "not a valid cursor")
    return offset


def identities_of(
    region: str, body: schemas.CustomerIn | schemas.IdentitySet, where: str
) -> list[Identity]:
    """Normalized identities of a request body; InvalidIdentity names the bad field."""
    found: list[Identity] = []
    for i, phone in enumerate(body.phones):
        found.append(
            Identity(IdentityKind.PHONE, normalize_phone(phone, region, field=f"{where}phones.{i}"))
        )
    for i, email in enumerate(body.emails):
        found.append(
            Identity(IdentityKind.EMAIL, normalize_email(email, field=f"{where}emails.{i}"))
        )
    for i, handle in enumerate(body.handles):
        found.append(
            Identity(
                IdentityKind.HANDLE,
                normalize_handle(handle.network, handle.id, field=f"{where}handles.{i}"),
            )
        )
    return found


async def list_customers(ctx: Ctx) -> Response:
    """Search by name/identity/message words, or exact lookup by phone or email."""
    params = ctx.request.query_params
    region = ctx.services.settings.default_region
    limit = int_param(ctx.request, "limit", 20, 1, 100)
    offset = _read_offset(params.get("cursor"))
    phone, email, q = params.get("phone"), params.get("email"), params.get("q")
    async with ctx.services.db.read() as conn:
        if phone or email:
            ident = (
                Identity(IdentityKind.PHONE, normalize_phone(phone, region, field="phone"))
                if phone
                else Identity(IdentityKind.EMAIL, normalize_email(email or "", field="email"))
            )
            owner = await customer_ops.find(conn, ident)
            # A customer of another team is not found, exactly like an unknown one.
            ids = [owner] if owner and await customer_ops.is_visible(conn, owner, ctx.teams) else []
            more = False
        else:
            if q and q.strip():
                ids = await customer_ops.search(
                    conn, q, limit=limit + 1, offset=offset, teams=ctx.teams
                )
            else:
                ids = await customer_ops.recent(
                    conn, limit=limit + 1, offset=offset, teams=ctx.teams
                )
            more = len(ids) > limit
            ids = ids[:limit]
        items = [(await customer_ops.get(conn, cid)).to_json() for cid in ids]
    return JSONResponse({"items": items, "next": _offset_cursor(offset + limit) if more else None})


async def create_customer(ctx: Ctx) -> Response:
    """Create a customer with identities."""
    body = await ctx.body(schemas.CustomerIn)
    region = ctx.services.settings.default_region
    ids = identities_of(region, body, "")
    customer_ops.check_timezone(body.timezone)

    async def op(conn: AsyncConnection) -> Answer:
        cid = await customer_ops.create(
            conn, name=body.name, timezone=body.timezone, attributes=body.attributes, ids=ids
        )
        return Answer(201, (await customer_ops.get(conn, cid)).to_json())

    return await ctx.write(op)


async def get_customer(ctx: Ctx) -> Response:
    """A customer with identities, consent and counts."""
    async with ctx.reading() as conn:
        await ctx.require_visible(conn, ctx.path("id"))
        customer = await customer_ops.get(conn, ctx.path("id"))
    if customer.erased_at is not None:
        raise ApiError(404, "not_found", f"no customer {ctx.path('id')!r}")
    return JSONResponse(customer.to_json())


async def patch_customer(ctx: Ctx) -> Response:
    """Change fields, add or remove identities."""
    body = await ctx.body(schemas.CustomerPatch)
    region = ctx.services.settings.default_region
    add = identities_of(region, body.add, "add.") if body.add else []
    remove = identities_of(region, body.remove, "remove.") if body.remove else []
    fields: dict[str, Any] = {}
    given = body.model_fields_set
    if "name" in given:
        fields["name"] = body.name
    if "timezone" in given:
        fields["timezone"] = customer_ops.check_timezone(body.timezone)
    customer_id = ctx.path("id")
    if body.teams is not None and not ctx.agent.has_role("supervisor"):
        raise ApiError(403, "forbidden", "teams: changing teams needs the supervisor role")

    async def op(conn: AsyncConnection) -> Answer:
        await ctx.require_visible(conn, customer_id)
        await customer_ops.update(
            conn, customer_id, attributes=body.attributes, add=add, remove=remove, **fields
        )
        if body.teams is not None:
            before = await customer_ops.teams_of(conn, customer_id)
            await customer_ops.set_teams(conn, customer_id, body.teams)
            after = await customer_ops.teams_of(conn, customer_id)
            if before != after:
                await ctx.audit(
                    conn,
                    "customer.teams",
                    customer_id=customer_id,
                    detail={"from": before, "to": after},
                )
        changed = (await customer_ops.get(conn, customer_id)).to_json()
        if body.teams is not None:
            changed["teams"] = await customer_ops.teams_of(conn, customer_id)
        return Answer(200, changed)

    return await ctx.write(op)


async def merge_customer(ctx: Ctx) -> Response:
    """Move the other customer's identities, events, documents and consent here."""
    body = await ctx.body(schemas.MergeIn)
    target_id = ctx.path("id")

    async def op(conn: AsyncConnection) -> Answer:
        await ctx.require_visible(conn, target_id)
        await ctx.require_visible(conn, body.other_id)
        merge_id = await merge_ops.merge(conn, target_id, body.other_id, actor=ctx.agent.id)
        await ctx.audit(
            conn,
            "customer.merge",
            customer_id=target_id,
            detail={"merge_id": merge_id, "other_id": body.other_id},
        )
        record = next(m for m in await merge_ops.history(conn, target_id) if m["id"] == merge_id)
        customer = await customer_ops.get(conn, target_id)
        return Answer(200, {"merge": record, "customer": customer.to_json()})

    return await ctx.write(op)


async def list_merges(ctx: Ctx) -> Response:
    """Merges into or out of a customer, newest first."""
    async with ctx.services.db.read() as conn:
        await ctx.require_visible(conn, ctx.path("id"))
        await customer_ops.require_exists(conn, ctx.path("id"))
        items = await merge_ops.history(conn, ctx.path("id"))
    return JSONResponse({"items": items, "next": None})


async def undo_merge(ctx: Ctx) -> Response:
    """Undo a merge: everything that moved goes back."""

    async def op(conn: AsyncConnection) -> Answer:
        target_id, other_id = await merge_ops.unmerge(conn, ctx.path("id"))
        await ctx.audit(
            conn,
            "customer.unmerge",
            customer_id=target_id,
            detail={"merge_id": ctx.path("id"), "other_id": other_id},
        )
        target = await customer_ops.get(conn, target_id)
        other = await customer_ops.get(conn, other_id)
        return Answer(200, {"target": target.to_json(), "other": other.to_json()})

    return await ctx.write(op, fingerprint_body=b"")


_ID = Param("id", "path", {"type": "string"}, "the customer's id", required=True)
_ERR = schemas.Error

ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/customers",
        list_customers,
        "Search customers, or look one up exactly by phone (any format) or email",
        "agent",
        {
            200: ("customers, best first", schemas.CustomerList),
            400: ("bad cursor", _ERR),
            401: ("no valid token", _ERR),
            422: ("an invalid phone, email or limit", _ERR),
        },
        params=(
            Param("q", "query", {"type": "string"}, "words of a name, identity or message"),
            Param("phone", "query", {"type": "string"}, "exact lookup by phone, any format"),
            Param("email", "query", {"type": "string"}, "exact lookup by email"),
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100}, "page size"),
            Param("cursor", "query", {"type": "string"}, "from the previous page's next"),
        ),
    ),
    Endpoint(
        "POST",
        "/api/v1/customers",
        create_customer,
        "Create a customer",
        "agent",
        {
            201: ("the new customer", schemas.CustomerOut),
            400: ("malformed JSON", _ERR),
            401: ("no valid token", _ERR),
            409: ("an identity already belongs to another customer", _ERR),
            422: ("an invalid field (named in error.field)", _ERR),
        },
        body=schemas.CustomerIn,
        idempotent=True,
    ),
    Endpoint(
        "GET",
        "/api/v1/customers/{id}",
        get_customer,
        "A customer with identities, consent and counts",
        "agent",
        {
            200: ("the customer", schemas.CustomerOut),
            401: ("no valid token", _ERR),
            404: ("no such customer", _ERR),
        },
        params=(_ID,),
        reads=True,
    ),
    Endpoint(
        "PATCH",
        "/api/v1/customers/{id}",
        patch_customer,
        "Change fields, add or remove identities, set teams (supervisor or above)",
        "agent",
        {
            200: ("the changed customer", schemas.CustomerOut),
            400: ("malformed JSON", _ERR),
            401: ("no valid token", _ERR),
            403: ("teams given without the supervisor role", _ERR),
            404: ("no such customer or identity", _ERR),
            409: ("an identity belongs to another customer, or this one was merged", _ERR),
            422: ("an invalid field", _ERR),
        },
        body=schemas.CustomerPatch,
        params=(_ID,),
        idempotent=True,
    ),
    Endpoint(
        "POST",
        "/api/v1/customers/{id}/merge",
        merge_customer,
        "Merge another customer into this one (undo with POST /api/v1/merges/{id}/undo)",
        "agent",
        {
            200: ("the merge and the customer now", schemas.MergeResult),
            400: ("malformed JSON", _ERR),
            401: ("no valid token", _ERR),
            404: ("no such customer", _ERR),
            409: ("the same customer, or one already merged", _ERR),
            422: ("an invalid field", _ERR),
        },
        body=schemas.MergeIn,
        params=(_ID,),
        idempotent=True,
    ),
    Endpoint(
        "GET",
        "/api/v1/customers/{id}/merges",
        list_merges,
        "Merges into or out of a customer",
        "agent",
        {
            200: ("the merges, newest first", schemas.MergeList),
            401: ("no valid token", _ERR),
            404: ("no such customer", _ERR),
        },
        params=(_ID,),
    ),
    Endpoint(
        "POST",
        "/api/v1/merges/{id}/undo",
        undo_merge,
        "Undo a merge: what moved goes back",
        "supervisor",
        {
            200: ("both customers as they are now", schemas.UnmergeResult),
            401: ("no valid token", _ERR),
            403: ("needs the supervisor role", _ERR),
            404: ("no such merge", _ERR),
            409: ("already undone, or the target was merged since", _ERR),
        },
        params=(Param("id", "path", {"type": "string"}, "the merge's id", required=True),),
        idempotent=True,
        tag="merges",
    ),
]
