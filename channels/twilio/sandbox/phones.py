"""HTTP handles on the customers' phones: text the hub, read a phone, opt numbers out.

No auth: these exist only in the sandbox, served on loopback or in the demo.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channels.twilio.sandbox.media import MediaFile
from channels.twilio.sandbox.shapes import E164

if TYPE_CHECKING:
    from channels.twilio.sandbox.app import Sandbox

__all__ = ["phone_routes"]


def phone_routes(sandbox: Sandbox) -> list[Route]:
    """``POST /sandbox/sms``, ``GET /sandbox/phones/{number}/messages``, opt-outs.

    ``POST /sandbox/sms`` takes ``{"from", "to", "body", "media_urls"?, "media"?}``;
    ``media`` items (``{"content_type", "content_base64"?}``) are hosted by the sandbox.
    """

    async def text_hub(request: Request) -> Response:
        payload = await _json_object(request)
        if payload is None:
            return _error("invalid_json", "expected a JSON object")
        from_, to = payload.get("from"), payload.get("to")
        body, media = payload.get("body", ""), payload.get("media_urls", [])
        if not isinstance(from_, str) or not E164.fullmatch(from_):
            return _error("invalid_from", "from must be an E.164 number")
        if not isinstance(to, str) or not E164.fullmatch(to):
            return _error("invalid_to", "to must be an E.164 number")
        if not isinstance(body, str) or not isinstance(media, list):
            return _error("invalid_body", "body must be text and media_urls a list")
        files = _media_files(payload.get("media", []))
        if files is None:
            return _error(
                "invalid_media",
                'media must be a list of {"content_type": ..., "content_base64"?: ...}',
            )
        if files and sandbox.base_url is None:
            sandbox.base_url = str(request.base_url).rstrip("/")  # mounted, not run_sandbox
        try:
            result = await sandbox.text_hub(
                from_, to, body, [str(url) for url in media], media=files
            )
        except httpx.HTTPError as exc:
            return _error("hub_unreachable", type(exc).__name__, 502)
        return JSONResponse(
            {
                "sid": result.sid,
                "hub_status": result.status_code,
                "media_urls": list(result.media_urls),
            }
        )

    async def phone_messages(request: Request) -> Response:
        return JSONResponse({"messages": sandbox.phone_log(request.path_params["number"])})

    async def opt_out(request: Request) -> Response:
        payload = await _json_object(request)
        number = payload.get("number") if payload else None
        from_ = payload.get("from") if payload else None
        if not isinstance(number, str) or not (from_ is None or isinstance(from_, str)):
            return _error("invalid_body", 'expected {"number": ..., "from": ...}')
        sandbox.opt_out(number, from_)
        return Response(status_code=204)

    async def opt_in(request: Request) -> Response:
        sandbox.opt_in(request.path_params["number"], request.query_params.get("from"))
        return Response(status_code=204)

    return [
        Route("/sandbox/sms", text_hub, methods=["POST"]),
        Route("/sandbox/phones/{number}/messages", phone_messages, methods=["GET"]),
        Route("/sandbox/opt-outs", opt_out, methods=["POST"]),
        Route("/sandbox/opt-outs/{number}", opt_in, methods=["DELETE"]),
    ]


def _media_files(items: Any) -> list[MediaFile] | None:
    """``[{"content_type": "image/png", "content_base64": "..."?}, ...]``; None if not."""
    if not isinstance(items, list):
        return None
    files = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("content_type"), str):
            return None
        encoded = item.get("content_base64")
        if encoded is None:
            files.append(MediaFile(item["content_type"]))
            continue
        try:
            content = base64.b64decode(str(encoded), validate=True)
        except binascii.Error:
            return None
        files.append(MediaFile(item["content_type"], content))
    return files


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        payload = await request.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _error(code: str, message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
