"""The data subject's rights: export (GDPR Art. 15) as JSON or as an archive with the
files (``hub.export_archive``), and erasure (Art. 17)."""

from __future__ import annotations

import logging
import shutil

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, JSONResponse, Response

from hub import export_archive, schemas
from hub.routing import Ctx, Endpoint, Param
from timeline import privacy
from timeline.events import utcnow
from timeline.idempotency import Answer
from timeline.records import iso

log = logging.getLogger(__name__)


async def export_customer(ctx: Ctx) -> Response:
    """Everything held about a customer, as one JSON document."""
    customer_id = ctx.path("id")
    async with ctx.services.db.write() as conn:
        await ctx.require_visible(conn, customer_id)
        data = await privacy.export(conn, customer_id)
        # The record commits with the read: no export leaves without its audit record.
        await ctx.audit(
            conn,
            "customer.export",
            customer_id=customer_id,
            detail={"events": len(data["events"]), "documents": len(data["documents"])},
        )
    log.info("export of customer %s by agent %s", customer_id, ctx.agent.id)
    return JSONResponse(
        data,
        headers={"Content-Disposition": f'attachment; filename="customer-{customer_id}.json"'},
    )


async def export_customer_archive(ctx: Ctx) -> Response:
    """Everything held about a customer as one ZIP: ``export.json`` (the JSON export),
    every document, attachment and MMS media file, every call recording, and
    ``manifest.json`` (each file's SHA-256; files that could not be included, and why)."""
    customer_id = ctx.path("id")
    async with ctx.services.db.write() as conn:
        await ctx.require_visible(conn, customer_id)
        data = await privacy.export(conn, customer_id)
        purged = await privacy.purged_documents(conn, customer_id)
        await ctx.audit(
            conn,
            "customer.export",
            customer_id=customer_id,
            detail={
                "format": "zip",
                "events": len(data["events"]),
                "documents": len(data["documents"]),
                "recordings": len(export_archive.recordings_of(data)),
            },
        )
    path, folder, manifest = await export_archive.build(
        data, purged, ctx.services.files, ctx.services.settings
    )
    log.info(
        "archive export of customer %s by agent %s: %d files, %d not included",
        customer_id,
        ctx.agent.id,
        len(manifest["files"]),
        len(manifest["not_included"]),
    )
    return FileResponse(
        path,
        media_type="application/zip",
        filename=f"customer-{customer_id}.zip",
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


async def erase_customer(ctx: Ctx) -> Response:
    """Erase a customer: only a tombstone is left, files no one else uses are deleted."""
    customer_id = ctx.path("id")
    files = ctx.services.files

    async def op(conn: AsyncConnection) -> Answer:
        await ctx.require_visible(conn, customer_id)
        hashes = await privacy.erase(conn, customer_id)
        await ctx.audit(
            conn, "customer.erase", customer_id=customer_id, detail={"files": len(hashes)}
        )

        def delete_files() -> None:
            for sha in hashes:
                files.delete(sha)

        ctx.after_commit.append(delete_files)
        return Answer(200, {"id": customer_id, "erased_at": iso(utcnow())})

    response = await ctx.write(op, fingerprint_body=b"")
    if response.status_code == 200:
        log.info("erasure of customer %s by agent %s", customer_id, ctx.agent.id)
    return response


_ID = Param("id", "path", {"type": "string"}, "the customer's id", required=True)
_ERR = schemas.Error

ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/customers/{id}/export",
        export_customer,
        "Everything held about a customer (GDPR Art. 15)",
        "supervisor",
        {
            200: ("the export", schemas.ExportOut),
            401: ("no valid token", _ERR),
            403: ("needs the supervisor role", _ERR),
            404: ("no such customer", _ERR),
        },
        params=(_ID,),
        tag="privacy",
    ),
    Endpoint(
        "GET",
        "/api/v1/customers/{id}/export.zip",
        export_customer_archive,
        "Everything held about a customer with all their files, as one ZIP (GDPR Art. 15)",
        "supervisor",
        {
            200: ("the archive (application/zip)", "binary"),
            401: ("no valid token", _ERR),
            403: ("needs the supervisor role", _ERR),
            404: ("no such customer", _ERR),
        },
        params=(_ID,),
        tag="privacy",
    ),
    Endpoint(
        "DELETE",
        "/api/v1/customers/{id}",
        erase_customer,
        "Erase a customer (GDPR Art. 17): identities, events, bodies, files, outbox",
        "admin",
        {
            200: ("the tombstone", schemas.Erased),
            401: ("no valid token", _ERR),
            403: ("needs the admin role", _ERR),
            404: ("no such customer, or already erased", _ERR),
        },
        params=(_ID,),
        idempotent=True,
        tag="privacy",
    ),
]
