"""Security headers on every response: a pure ASGI middleware.

OWASP ASVS 5.0 V3.4 (browser security mechanism headers) and the OWASP Secure Headers
project: every answer of the hub, API JSON, errors, webhooks, 404s and 500s alike, carries

- ``Content-Security-Policy`` (W3C CSP Level 3): for the JSON API nothing may load, frame
  or be framed (``default-src 'none'; frame-ancestors 'none'; base-uri 'none';
  object-src 'none'``). A route that sets its own policy (console pages, document
  downloads with ``sandbox``) keeps it: a header the app already set is never replaced.
- ``X-Content-Type-Options: nosniff`` (Fetch standard) so a JSON or uploaded file is never
  sniffed into HTML or script.
- ``Referrer-Policy: no-referrer`` (W3C Referrer Policy): URLs with customer ids do not
  leak to other origins.
- ``X-Frame-Options: DENY`` (RFC 7034) for browsers without ``frame-ancestors``.
- ``Strict-Transport-Security`` (RFC 6797) only when ``HUB_PUBLIC_URL`` is https: over
  plain http the header is ignored by browsers (RFC 6797 8.1) and only misleads.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: it only edits the header list
of ``http.response.start`` (no task per request, no body buffering, SSE streams pass
through untouched). :class:`HardenedStarlette` puts it outside Starlette's own
``ServerErrorMiddleware``, so even the answer to an unhandled error carries the headers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The policy of the JSON API (and of every answer that sets none of its own).
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
#: A year, with subdomains (RFC 6797 6.1.1, 6.1.2); no ``preload``: that is a deployment
#: decision with consequences beyond this hub.
HSTS = "max-age=31536000; includeSubDomains"


def security_headers(*, https: bool, csp: str = API_CSP) -> list[tuple[bytes, bytes]]:
    """The headers added to every answer (lower-case names, as ASGI wants them)."""
    headers = [
        (b"content-security-policy", csp.encode("latin-1")),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    ]
    if https:
        headers.append((b"strict-transport-security", HSTS.encode("latin-1")))
    return headers


class SecurityHeaders:
    """ASGI middleware: adds :func:`security_headers` a response does not already have."""

    def __init__(self, app: ASGIApp, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.headers = tuple(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {bytes(name).lower() for name, _ in headers}
                for pair in extra:
                    if pair[0] not in present:
                        headers.append(pair)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HardenedStarlette(Starlette):
    """A Starlette app whose whole stack, error handling included, sits in SecurityHeaders."""

    def __init__(self, *args: Any, https: bool = False, **kwargs: Any) -> None:
        self.security_headers = security_headers(https=https)
        super().__init__(*args, **kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        """Starlette's stack wrapped by :class:`SecurityHeaders` (outermost)."""
        return SecurityHeaders(super().build_middleware_stack(), self.security_headers)
