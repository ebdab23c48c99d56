"""A customer's timeline, internal notes, and documents (upload and download)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from hub import schemas
from hub.errors import ApiError
from hub.routing import Ctx, Endpoint, Param, int_param
from timeline import customers as customer_ops
from timeline import documents as document_ops
from timeline import store
from timeline.db import Database, Statement
from timeline.errors import NotFound
from timeline.events import Channel, Direction, Event, Kind, utcnow
from timeline.files import TooLarge
from timeline.idempotency import Answer
from timeline.ingest import ingest_batch

_CHANNELS = {c.value for c in Channel}


async def get_timeline(ctx: Ctx) -> Response:
    """A customer's events, newest first, by keyset pages."""
    request = ctx.request
    limit = int_param(request, "limit", 50, 1, store.MAX_PAGE)
    customer_id = ctx.path("id")
    if ctx.prefetched is not None:  # _first_page_reads: the customer's teams, the page
        assigned, rows = ctx.prefetched
        if not customer_ops.visible_among(ctx.teams, [r[0] for r in assigned]):
            raise NotFound("customer", customer_id)
        texts, nxt = store.first_page_json_of(rows, limit)
        if texts:
            return _page_response(texts, nxt)
    channels = [c for c in request.query_params.get("channel", "").split(",") if c.strip()]
    unknown = [c for c in channels if c not in _CHANNELS]
    if unknown:
        raise ApiError(
            422,
            "invalid_field",
            f"channel: unknown channel {unknown[0]!r} (one of {', '.join(sorted(_CHANNELS))})",
            field="channel",
        )
    cursor = request.query_params.get("cursor") or None
    q = request.query_params.get("q") or None
    async with ctx.reading() as conn:
        await ctx.require_visible(conn, customer_id)
        if not (cursor or channels or q):
            found = await store.first_page_json(conn, customer_id, limit=limit)
            if found is not None and found[0]:
                return _page_response(*found)
        items, nxt = await store.page(
            conn,
            customer_id,
            limit=limit,
            cursor=cursor,
            channels=channels,
            q=q,
        )
        if not items:
            await customer_ops.require_exists(conn, customer_id)
    return JSONResponse({"items": [e.to_json() for e in items], "next": nxt})


def _page_response(texts: list[str], nxt: str | None) -> Response:
    """A page from its events' JSON texts (``store.first_page_json``)."""
    # A cursor is URL-safe base64: nothing in it needs escaping. One f-string copies the
    # ~35 KB page once (a chain of + copied it at each step).
    after = f'"{nxt}"' if nxt is not None else "null"
    return Response(
        f'{{"items":[{",".join(texts)}],"next":{after}}}'.encode(), media_type="application/json"
    )


def _first_page_reads(request: Request, db: Database) -> list[Statement] | None:
    """``Endpoint.prefetch`` of a first page on SQLite: the customer's teams, the page.

    None (read the usual way) for other pages, on PostgreSQL, and for a limit that
    ``get_timeline`` answers 422 to (that answer comes after the token check).
    """
    if not (db.is_sqlite and db.direct):
        return None
    query = request.query_params
    if query.get("cursor") or query.get("channel") or query.get("q"):
        return None
    try:
        limit = int_param(request, "limit", 50, 1, store.MAX_PAGE)
    except ApiError:
        return None
    customer_id = str(request.path_params["id"])
    return [
        customer_ops.TEAMS_OF.statement_for(db.engine.dialect, customer_id=customer_id),
        store.first_page_json_statement(customer_id, limit),
    ]


async def add_note(ctx: Ctx) -> Response:
    """An internal note on the timeline."""
    body = await ctx.body(schemas.NoteIn)
    customer_id = ctx.path("id")
    services = ctx.services
    note = Event(
        channel=Channel.NOTE,
        kind=Kind.NOTE,
        direction=Direction.INTERNAL,
        occurred_at=utcnow(),
        text=body.text,
        customer_id=customer_id,
        data={"author": ctx.agent.id},
    )

    async def op(conn: AsyncConnection) -> Answer:
        await ctx.require_visible(conn, customer_id)
        await customer_ops.require_active(conn, customer_id)
        result = await ingest_batch(conn, [note], region=services.settings.default_region)
        stored = result.outcomes[0].event
        assert stored is not None
        ctx.after_commit.append(lambda: services.publisher.publish("timeline", stored))
        return Answer(201, stored.to_json())

    return await ctx.write(op)


_SAFE_NAME = re.compile(r"[^\w.\- ()]+", re.UNICODE)


def safe_filename(name: str | None) -> str:
    """A file name without paths or control characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _SAFE_NAME.sub("_", base).strip(" .")
    return cleaned[:200] or "document"


class _Limited:
    """Wraps an ASGI receive so a body over the limit stops being read (413)."""

    def __init__(self, request: Request, limit: int) -> None:
        self.request = request
        self.limit = limit

    async def chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.request.stream():
            seen += len(chunk)
            if seen > self.limit:
                raise ApiError(413, "too_large", f"the upload is over {self.limit} bytes")
            yield chunk


async def upload_document(ctx: Ctx) -> Response:
    """Upload a file to a customer's profile (multipart/form-data, field ``file``)."""
    request = ctx.request
    services = ctx.services
    limit = services.settings.max_upload_bytes
    # Room for the multipart envelope around the file itself.
    envelope = 16 * 1024
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + envelope:
        raise ApiError(413, "too_large", f"the upload is over {limit} bytes")
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(400, "bad_request", "expected multipart/form-data with a file field")
    customer_id = ctx.path("id")
    async with services.db.read() as conn:
        await ctx.require_visible(conn, customer_id)
        await customer_ops.require_active(conn, customer_id)
    limited = _Limited(request, limit + envelope)
    receive_request = Request(request.scope, _receive_from(limited.chunks()))
    try:
        form = await receive_request.form(max_files=1, max_fields=10, max_part_size=limit + 1)
    except ApiError:
        raise
    except Exception as exc:  # python-multipart / starlette parse errors
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "invalid_field", "file: a file part is required", field="file")

        async def file_chunks() -> AsyncIterator[bytes]:
            while chunk := await upload.read(64 * 1024):
                yield chunk

        try:
            sha, size = await services.files.put_stream(file_chunks(), limit)
        except TooLarge:
            raise ApiError(413, "too_large", f"the upload is over {limit} bytes") from None
        filename = safe_filename(upload.filename)
        media_type = (upload.content_type or "application/octet-stream")[:255]
    finally:
        await form.close()

    async def op(conn: AsyncConnection) -> Answer:
        await ctx.require_visible(conn, customer_id)
        document, event = await document_ops.add_upload(
            conn,
            customer_id,
            filename=filename,
            content_type=media_type,
            sha256=sha,
            size=size,
            author=ctx.agent.id,
        )
        ctx.after_commit.append(lambda: services.publisher.publish("timeline", event))
        return Answer(201, {"document": document.to_json(), "event": event.to_json()})

    fingerprint = json.dumps([sha, filename, media_type]).encode()
    return await ctx.write(op, fingerprint_body=fingerprint)


def _receive_from(chunks: AsyncIterator[bytes]):  # type: ignore[no-untyped-def]
    async def receive() -> dict[str, object]:
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    return receive


async def download_document(ctx: Ctx) -> Response:
    """Download a document's file (always as an attachment, never rendered inline)."""
    async with ctx.services.db.read() as conn:
        document = await document_ops.get(conn, ctx.path("id"))
        if not await customer_ops.is_visible(conn, document.customer_id, ctx.teams):
            raise ApiError(404, "not_found", f"no document {ctx.path('id')!r}")
    if document.sha256 is None or not ctx.services.files.exists(document.sha256):
        raise ApiError(404, "not_found", "the file is not (yet) stored")
    return FileResponse(
        ctx.services.files.path(document.sha256),
        media_type=document.content_type,
        filename=document.filename,
        content_disposition_type="attachment",
        headers={"Content-Security-Policy": "default-src 'none'; sandbox"},
    )


async def list_documents(ctx: Ctx) -> Response:
    """A customer's documents, newest first."""
    async with ctx.services.db.read() as conn:
        await ctx.require_visible(conn, ctx.path("id"))
        await customer_ops.require_exists(conn, ctx.path("id"))
        docs = await document_ops.for_customer(conn, ctx.path("id"))
    return JSONResponse({"items": [d.to_json() for d in docs], "next": None})


_ID = Param("id", "path", {"type": "string"}, "the customer's id", required=True)
_ERR = schemas.Error

ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/customers/{id}/timeline",
        get_timeline,
        "A customer's timeline, newest first",
        "agent",
        {
            200: ("a page of events", schemas.EventPage),
            400: ("bad cursor", _ERR),
            401: ("no valid token", _ERR),
            404: ("no such customer", _ERR),
            422: ("an invalid limit or channel", _ERR),
        },
        params=(
            _ID,
            Param(
                "limit",
                "query",
                {"type": "integer", "minimum": 1, "maximum": store.MAX_PAGE},
                "page size (default 50)",
            ),
            Param(
                "channel", "query", {"type": "string"}, "comma-separated channels, e.g. sms,email"
            ),
            Param("q", "query", {"type": "string"}, "words the events must contain"),
            Param("cursor", "query", {"type": "string"}, "from the previous page's next"),
        ),
        tag="timeline",
        reads=True,
        prefetch=_first_page_reads,
    ),
    Endpoint(
        "POST",
        "/api/v1/customers/{id}/notes",
        add_note,
        "Add an internal note to the timeline",
        "agent",
        {
            201: ("the note's event", schemas.EventOut),
            400: ("malformed JSON", _ERR),
            401: ("no valid token", _ERR),
            404: ("no such customer", _ERR),
            409: ("the customer was merged into another", _ERR),
            422: ("an invalid field", _ERR),
        },
        body=schemas.NoteIn,
        params=(_ID,),
        idempotent=True,
        tag="timeline",
    ),
    Endpoint(
        "POST",
        "/api/v1/customers/{id}/documents",
        upload_document,
        "Upload a document to the profile (multipart/form-data, field `file`)",
        "agent",
        {
            201: ("the document and its timeline event", schemas.DocumentCreated),
            400: ("not multipart, or malformed", _ERR),
            401: ("no valid token", _ERR),
            404: ("no such customer", _ERR),
            409: ("the customer was merged into another", _ERR),
            413: ("over HUB_MAX_UPLOAD_BYTES", _ERR),
            422: ("no file part", _ERR),
        },
        params=(_ID,),
        idempotent=True,
        multipart=True,
        tag="documents",
    ),
    Endpoint(
        "GET",
        "/api/v1/customers/{id}/documents",
        list_documents,
        "A customer's documents",
        "agent",
        {
            200: ("documents, newest first", schemas.DocumentList),
            401: ("no valid token", _ERR),
            404: ("no such customer", _ERR),
        },
        params=(_ID,),
        tag="documents",
    ),
    Endpoint(
        "GET",
        "/api/v1/documents/{id}",
        download_document,
        "Download a document's file",
        "agent",
        {
            200: ("the file, as an attachment", "binary"),
            401: ("no valid token", _ERR),
            404: ("no such document, or its file is not stored yet", _ERR),
        },
        params=(Param("id", "path", {"type": "string"}, "the document's id", required=True),),
        tag="documents",
    ),
]
