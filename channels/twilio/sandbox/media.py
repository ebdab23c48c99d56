"""The sandbox's Media subresource: MMS media hosted on the sandbox, behind Basic auth.

https://www.twilio.com/docs/messaging/api/media-resource

A file a customer's phone attaches (:class:`MediaFile`) becomes a Media resource
(``ME`` + 32 hex digits) of its Message. Its URL, the ``MediaUrl{N}`` of the webhook, is
``{base}/2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media/{MediaSid}``: a GET
without an extension answers the bytes with their content type, ``.json`` the resource,
``Media.json`` the list (``media_list``), and ``DELETE ....json`` removes it (204; a later
GET is 404). Every one of them needs HTTP Basic auth with the account sid and auth token
(401, code 20003, otherwise), as Twilio enforces for media URLs.

With ``Sandbox.media_redirect`` set to a base URL, a media GET answers ``307`` to a
short-lived signed URL there (``/sandbox/media-cdn/{MediaSid}?Expires=&Signature=``,
served by the sandbox app without Basic auth), the way Twilio hands media out from a CDN
on another origin: serve ``sandbox.app`` a second time at that base to use it.

Without bytes, a :class:`MediaFile` gets a small valid file of its type: a 1x1 PNG,
JPEG or GIF, a line of text for ``text/*``; other types get a line of text labelled
with the type. Each names its media sid, so no two are the same file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from channels.twilio.sandbox.shapes import API_VERSION, PAGING, list_page, not_found, now_rfc2822

if TYPE_CHECKING:
    from channels.twilio.sandbox.app import Sandbox

__all__ = ["MediaFile", "StoredMedia", "media_resource", "media_routes", "sample_content"]

#: How long a signed CDN URL of a redirect stays valid, in seconds.
CDN_URL_LIFETIME = 300


@dataclasses.dataclass(frozen=True, slots=True)
class MediaFile:
    """A file a customer's phone attaches to an MMS; the sandbox hosts it.

    ``content`` None: a small valid file of ``content_type`` (see the module docstring).
    """

    content_type: str = "image/jpeg"
    content: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StoredMedia:
    """A Media resource the sandbox holds: its message, type, bytes and creation date."""

    sid: str
    message_sid: str
    content_type: str
    content: bytes
    date_created: str


def media_path(account_sid: str, message_sid: str, media_sid: str) -> str:
    """The path of a media file (its resource is this plus ``.json``)."""
    return f"/{API_VERSION}/Accounts/{account_sid}/Messages/{message_sid}/Media/{media_sid}"


def media_resource(account_sid: str, media: StoredMedia) -> dict[str, Any]:
    """The Media resource as the REST API shows it."""
    return {
        "account_sid": account_sid,
        "content_type": media.content_type,
        "date_created": media.date_created,
        "date_updated": media.date_created,
        "parent_sid": media.message_sid,
        "sid": media.sid,
        "uri": media_path(account_sid, media.message_sid, media.sid) + ".json",
    }


def stored(sid: str, message_sid: str, file: MediaFile) -> StoredMedia:
    """The stored form of a file attached to ``message_sid``."""
    content = file.content if file.content is not None else sample_content(file.content_type, sid)
    return StoredMedia(sid, message_sid, file.content_type, content, now_rfc2822())


def sample_content(content_type: str, label: str) -> bytes:
    """A small valid file of ``content_type`` that carries ``label`` (in a comment)."""
    media = content_type.split(";", 1)[0].strip().lower()
    comment = label.encode("ascii", "replace")[:200]
    if media == "image/png":
        return _png(_colour(label), comment)
    if media in ("image/jpeg", "image/jpg"):
        return _jpeg(comment)
    if media == "image/gif":
        return _gif(_colour(label), comment)
    if media.startswith("text/"):
        return b"Sandbox media " + comment + b"\n"
    return b"Sandbox media " + comment + b" (" + media.encode("ascii", "replace") + b")\n"


def _colour(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()[:3]


def _png(rgb: bytes, comment: bytes) -> bytes:
    """A 1x1 truecolour PNG (https://www.w3.org/TR/png/) with a tEXt comment."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8 bits, RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"tEXt", b"Comment\x00" + comment)
        + chunk(b"IDAT", zlib.compress(b"\x00" + rgb))  # filter 0, one pixel
        + chunk(b"IEND", b"")
    )


def _jpeg(comment: bytes) -> bytes:
    """A 1x1 grey baseline JPEG (ITU T.81) with a COM segment.

    One 8x8 block whose DC difference is 0 (mid grey) and whose AC coefficients are all
    zero: each Huffman table needs a single one-bit code, ``0``.
    """

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload

    one_code = b"\x01" + b"\x00" * 15  # one code of length 1
    return (
        b"\xff\xd8"
        + segment(0xFE, comment)
        + segment(0xDB, b"\x00" + b"\x01" * 64)  # quantization table 0: all ones
        + segment(0xC0, struct.pack(">BHHB", 8, 1, 1, 1) + b"\x01\x11\x00")
        + segment(0xC4, b"\x00" + one_code + b"\x00")  # DC table 0: category 0
        + segment(0xC4, b"\x10" + one_code + b"\x00")  # AC table 0: end of block
        + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
        + b"\x3f"  # DC "0", EOB "0", padded with one bits
        + b"\xff\xd9"
    )


def _gif(rgb: bytes, comment: bytes) -> bytes:
    """A 1x1 GIF89a (https://www.w3.org/Graphics/GIF/spec-gif89a.txt) with a comment."""
    return (
        b"GIF89a"
        + struct.pack("<HH", 1, 1)
        + b"\x80\x00\x00"  # a global colour table of two entries
        + rgb
        + b"\xff\xff\xff"
        + b"\x21\xfe"
        + bytes((len(comment),))
        + comment
        + b"\x00"
        + b"\x2c"
        + struct.pack("<HHHH", 0, 0, 1, 1)
        + b"\x00"
        + b"\x02\x02\x44\x01\x00"  # LZW: minimum code size 2, the one pixel is colour 0
        + b"\x3b"
    )


def _cdn_signature(secret: str, sid: str, expires: int) -> str:
    message = f"{sid}:{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def media_routes(sandbox: Sandbox, prefix: str) -> list[Route]:
    """The Media list, fetch, delete and content routes, and the sandbox's CDN."""

    def lookup(request: Request) -> StoredMedia | None:
        media = sandbox.media.get(request.path_params["media_sid"])
        if media is None or media.message_sid != request.path_params["sid"]:
            return None
        return media

    async def list_media(request: Request) -> Response:
        if (denied := sandbox.denied(request)) is not None:
            return denied
        message_sid = request.path_params["sid"]
        if message_sid not in sandbox.messages:
            return not_found(request.url.path)
        query = request.query_params
        try:
            page_size = min(max(int(query.get("PageSize", "50")), 1), 1000)
            page = max(int(query.get("Page", "0")), 0)
        except ValueError:
            page_size, page = 50, 0
        selected = [
            media_resource(sandbox.account_sid, m)
            for m in reversed(sandbox.media.values())
            if m.message_sid == message_sid
        ]
        kept = [(k, v) for k, v in query.multi_items() if k not in PAGING]
        base = f"/{API_VERSION}/Accounts/{sandbox.account_sid}/Messages/{message_sid}/Media.json"
        return JSONResponse(list_page("media_list", selected, base, kept, page, page_size))

    async def fetch_resource(request: Request) -> Response:
        if (denied := sandbox.denied(request)) is not None:
            return denied
        media = lookup(request)
        if media is None:
            return not_found(request.url.path)
        return JSONResponse(media_resource(sandbox.account_sid, media))

    async def delete_resource(request: Request) -> Response:
        if (denied := sandbox.denied(request)) is not None:
            return denied
        media = lookup(request)
        if media is None:
            return not_found(request.url.path)
        del sandbox.media[media.sid]
        return Response(status_code=204)

    async def content(request: Request) -> Response:
        if (denied := sandbox.denied(request)) is not None:
            return denied
        media = lookup(request)
        if media is None:
            return not_found(request.url.path)
        if sandbox.media_redirect:
            expires = int(time.time()) + CDN_URL_LIFETIME
            query = urlencode(
                {
                    "Expires": expires,
                    "Signature": _cdn_signature(sandbox.auth_token, media.sid, expires),
                }
            )
            target = f"{sandbox.media_redirect.rstrip('/')}/sandbox/media-cdn/{media.sid}"
            return RedirectResponse(f"{target}?{query}", status_code=307)
        return Response(media.content, media_type=media.content_type)

    async def cdn(request: Request) -> Response:
        media = sandbox.media.get(request.path_params["media_sid"])
        try:
            expires = int(request.query_params.get("Expires", ""))
        except ValueError:
            expires = 0
        signature = request.query_params.get("Signature", "")
        good = media is not None and hmac.compare_digest(
            signature, _cdn_signature(sandbox.auth_token, media.sid, expires)
        )
        if media is None or not good or expires < time.time():
            return Response("Access Denied", status_code=403, media_type="text/plain")
        return Response(media.content, media_type=media.content_type)

    message = f"{prefix}/Messages/{{sid}}"
    return [
        Route(f"{message}/Media.json", list_media, methods=["GET"]),
        # The .json routes first: a media sid parameter would also match "ME....json".
        Route(f"{message}/Media/{{media_sid}}.json", fetch_resource, methods=["GET"]),
        Route(f"{message}/Media/{{media_sid}}.json", delete_resource, methods=["DELETE"]),
        Route(f"{message}/Media/{{media_sid}}", content, methods=["GET"]),
        Route("/sandbox/media-cdn/{media_sid}", cdn, methods=["GET"]),
    ]
