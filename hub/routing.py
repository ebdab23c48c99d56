"""How API endpoints are declared: handler, role, body model, answers.

One declaration feeds both the Starlette route and the OpenAPI schema
(``hub.openapi``), so the schema cannot drift from what the code accepts and answers.
A handler gets a :class:`Ctx` with the request, the authenticated agent and the hub's
services; writes go through ``ctx.write(op)``, which runs ``op`` in one transaction
and honours the ``Idempotency-Key`` header (``timeline.idempotency``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import audit
from hub.auth import Agent, agent_of, bearer_token
from hub.errors import ApiError, answer_for
from timeline import customers as customer_ops
from timeline import idempotency
from timeline.db import Database, DirectQuery, Statement
from timeline.errors import NotFound, TimelineError
from timeline.idempotency import Answer, AnswerError
from timeline.schema import customers
from timeline.store import BadCursor

if TYPE_CHECKING:
    from hub.services import Services

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Handler = Callable[["Ctx"], Awaitable[Response]]
AfterCommit = Callable[[], Any]


@dataclasses.dataclass(frozen=True)
class Param:
    """A query or path parameter, for the schema."""

    name: str
    where: str  # "query" or "path"
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One API operation."""

    method: str
    path: str
    handler: Handler
    summary: str
    role: str | None
    responses: dict[int, tuple[str, type[BaseModel] | str | None]]
    body: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    idempotent: bool = False
    tag: str = "customers"
    multipart: bool = False
    #: A read-only operation: the token is checked on the connection the handler then
    #: reads with (``Ctx.reading``, a ``db.read_statements()``): on SQLite the token, the
    #: team check and a first timeline page cost three driver calls, no transaction.
    reads: bool = False
    #: With ``reads``: the handler's first reads, built from the request alone (path and
    #: query, never the agent) as driver SQL, or None to read the usual way. They go to
    #: the database with the token lookup in one call (``Database.fetch_each``: on SQLite
    #: one trip to aiosqlite's thread and no SQLAlchemy connection); the handler sees
    #: their rows (``Ctx.prefetched``) only once the token and the role are checked.
    prefetch: Callable[[Request, Database], list[Statement] | None] | None = None


class Ctx:
    """What a handler works with."""

    def __init__(
        self,
        request: Request,
        services: Services,
        agent: Agent | None,
        conn: AsyncConnection | None = None,
        prefetched: list[list[Any]] | None = None,
    ) -> None:
        self.request = request
        self.services = services
        self._agent = agent
        self._conn = conn
        #: The rows of the endpoint's ``prefetch`` statements, if they were sent.
        self.prefetched = prefetched
        self.after_commit: list[AfterCommit] = []

    def reading(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """The request's read connection (``Endpoint.reads``), else a new ``db.read()``."""
        if self._conn is not None:
            return contextlib.nullcontext(self._conn)
        return self.services.db.read()

    @property
    def agent(self) -> Agent:
        """The authenticated agent (every endpoint with a role has one)."""
        assert self._agent is not None
        return self._agent

    @property
    def teams(self) -> frozenset[str] | None:
        """The teams whose customers this agent sees; None: every customer.

        Object-level access control (OWASP ASVS 5.0 V8.2.2): supervisors and admins see
        every customer, an agent those of their team and the unassigned ones.
        """
        return team_scope(self.agent)

    async def require_visible(self, conn: AsyncConnection, customer_id: str) -> None:
        """NotFound (404, never 403: ids cannot be probed) unless the agent sees it.

        ``timeline.customers.require_visible``, with the statement of each team set
        built once (every API read asks it).
        """
        teams = self.teams
        if teams is None:
            return
        rows = await _visibility(teams).rows(conn, customer_id=customer_id)
        if rows and not rows[0][1]:
            raise NotFound("customer", customer_id)

    async def audit(
        self,
        target: AsyncConnection | Database,
        action: str,
        *,
        customer_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """An audit record of this request's agent (in ``target``'s transaction)."""
        await audit.request_record(
            target,
            self.request,
            action,
            agent_id=self._agent.id if self._agent else None,
            customer_id=customer_id,
            detail=detail,
        )

    def path(self, name: str) -> str:
        """A path parameter."""
        return str(self.request.path_params[name])

    async def body(self, model: type[M]) -> M:
        """The JSON body, validated: 400 if it is not JSON, 422 naming the field if wrong."""
        raw = await self.request.body()
        if not raw:
            raise ApiError(400, "bad_request", "expected a JSON body")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            raise ApiError(422, "invalid_field", f"{field}: {first['msg']}", field=field) from None

    async def write(
        self,
        op: Callable[[AsyncConnection], Awaitable[Answer]],
        *,
        fingerprint_body: bytes | None = None,
    ) -> Response:
        """Run ``op`` in a write transaction, once per Idempotency-Key if one is given."""

        async def guarded(conn: AsyncConnection) -> Answer:
            try:
                return await op(conn)
            except TimelineError as exc:
                answer = answer_for(exc)
                assert answer is not None
                raise AnswerError(answer) from exc

        key = self.request.headers.get("idempotency-key")
        db = self.services.db
        if key is None:
            try:
                async with db.write() as conn:
                    answer = await guarded(conn)
            except AnswerError as exc:
                self.after_commit.clear()
                return json_answer(exc.answer)
            await self._run_after_commit()
            return json_answer(answer)
        if not key or len(key) > 255:
            raise ApiError(400, "bad_idempotency_key", "Idempotency-Key must be 1-255 characters")
        body = fingerprint_body if fingerprint_body is not None else await self.request.body()
        fp = idempotency.fingerprint(self.request.method, self.request.url.path, body)
        answer, replayed = await idempotency.run(db, self.agent.id, key, fp, guarded)
        if replayed:
            self.after_commit.clear()
        else:
            await self._run_after_commit()
        response = json_answer(answer)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    async def _run_after_commit(self) -> None:
        for callback in self.after_commit:
            result = callback()
            if hasattr(result, "__await__"):
                await result
        self.after_commit.clear()


_VISIBILITY: dict[frozenset[str], DirectQuery] = {}


def _visibility(teams: frozenset[str]) -> DirectQuery:
    """Whether a customer (if it exists) is visible to agents of ``teams``."""
    query = _VISIBILITY.get(teams)
    if query is None:
        if len(_VISIBILITY) >= 256:  # team sets are few; never let them grow unbounded
            _VISIBILITY.clear()
        query = _VISIBILITY[teams] = DirectQuery(
            sa.select(customers.c.id, customer_ops.visible_to(teams).label("visible")).where(
                customers.c.id == sa.bindparam("customer_id", "")
            )
        )
    return query


def team_scope(agent: Agent) -> frozenset[str] | None:
    """The teams whose customers ``agent`` sees; None: all (supervisor and above)."""
    if agent.has_role("supervisor"):
        return None
    return frozenset({agent.team}) if agent.team else frozenset()


def json_answer(answer: Answer) -> Response:
    """A stored or fresh answer as a response."""
    if answer.status == 204:
        return Response(status_code=204)
    headers = {"WWW-Authenticate": "Bearer"} if answer.status == 401 else None
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within bounds, or 422 naming it."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            422, "invalid_field", f"{name}: expected a whole number", field=name
        ) from None
    if not low <= value <= high:
        raise ApiError(
            422, "invalid_field", f"{name}: must be between {low} and {high}", field=name
        )
    return value


def to_route(
    endpoint: Endpoint, services_of: Callable[[Request], Services]
) -> Callable[[Request], Awaitable[Response]]:
    """The request handler that authenticates, checks the role and calls the handler."""

    async def call(request: Request) -> Response:
        services = services_of(request)
        agent = None
        try:
            reads = (
                endpoint.prefetch(request, services.db)
                if endpoint.prefetch is not None and endpoint.role is not None
                else None
            )
            if reads is not None:
                assert endpoint.role is not None
                try:
                    agent, rows = await _authenticate_with(services, request, reads)
                    _require_role(agent, endpoint.role)
                    response = await endpoint.handler(
                        Ctx(request, services, agent, prefetched=rows)
                    )
                finally:
                    if agent is not None:
                        await services.tokens.touch(agent)
            elif endpoint.reads and endpoint.role is not None:
                try:
                    async with services.db.read_statements() as conn:
                        agent = await services.authenticate(request, conn)
                        _require_role(agent, endpoint.role)
                        response = await endpoint.handler(Ctx(request, services, agent, conn))
                finally:
                    if agent is not None:
                        await services.tokens.touch(agent)
            else:
                if endpoint.role is not None:
                    agent = await services.authenticate(request)
                    _require_role(agent, endpoint.role)
                response = await endpoint.handler(Ctx(request, services, agent))
        except (TimelineError, AnswerError, BadCursor) as exc:
            answer = answer_for(exc)
            assert answer is not None
            response = json_answer(answer)
        if response.status_code in (401, 403):
            await _audit_denial(services, request, agent, response.status_code)
        return response

    call.__name__ = endpoint.handler.__name__
    return call


async def _authenticate_with(
    services: Services, request: Request, reads: list[Statement]
) -> tuple[Agent, list[list[Any]]]:
    """The request's agent (401 without a valid token) and the rows of ``reads``.

    The token lookup and ``reads`` in one ``Database.fetch_each``; the rows are handed
    on only for a valid token (``Services.authenticate``'s answers otherwise).
    """
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise ApiError(401, "unauthorized", "missing bearer token")
    lookup = services.tokens.lookup_statement(services.db.engine.dialect, token)
    if lookup is None:
        raise ApiError(401, "unauthorized", "invalid or revoked token")
    rows = await services.db.fetch_each([lookup, *reads])
    agent = agent_of(rows[0])
    if agent is None:
        raise ApiError(401, "unauthorized", "invalid or revoked token")
    return agent, rows[1:]


def _require_role(agent: Agent, role: str) -> None:
    if not agent.has_role(role):
        raise ApiError(403, "forbidden", f"this needs the {role} role or above")


async def _audit_denial(
    services: Services, request: Request, agent: Agent | None, status: int
) -> None:
    """Denied access is audited (OWASP ASVS 5.0 V16.3.2) and logged at WARNING."""
    ip = audit.client_ip(request)
    # The path as the client sent it (decoded): ``request.url`` would drop CR/LF/TAB.
    path = str(request.scope.get("path", ""))[:500]
    log.warning(
        "denied %s %s with %d to %s from %s",
        request.method,
        path,
        status,
        f"agent {agent.id}" if agent else "no valid token",
        ip,
    )
    try:
        await audit.record(
            services.db,
            "access.denied",
            agent_id=agent.id if agent else None,
            detail={"method": request.method, "path": path, "status": status},
            ip=ip,
        )
    except Exception:  # an answer is never lost for its audit record; the log line stays
        log.exception("could not write the audit record of a denial")


def to_routes(endpoints: list[Endpoint], services_of: Callable[[Request], Services]) -> list[Route]:
    """One route per path, dispatching by method, so a 405 lists every allowed method."""
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for endpoint in endpoints:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = to_route(endpoint, services_of)
    routes = []
    for path, handlers in by_path.items():

        async def dispatch(
            request: Request,
            handlers: dict[str, Callable[[Request], Awaitable[Response]]] = handlers,
        ) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await handlers[method](request)

        routes.append(Route(path, dispatch, methods=list(handlers)))
    return routes
