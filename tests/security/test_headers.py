"""RELIABILITY 38: every response carries CSP, nosniff, frame-ancestors, Referrer-Policy,
X-Frame-Options, and HSTS when HUB_PUBLIC_URL is https (OWASP ASVS 5.0 V3.4)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from hub.app import create_app
from hub.security import API_CSP, HardenedStarlette
from tests.hub.conftest import BASE_URL, Hub, hub_settings

EXPECTED = {
    "content-security-policy": API_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def assert_hardened(response: httpx.Response, *, csp: str = API_CSP, hsts: bool = False) -> None:
    """The security headers are there, exactly once each."""
    for name, value in {**EXPECTED, "content-security-policy": csp}.items():
        assert response.headers.get_list(name) == [value], (name, response.headers)
    assert "frame-ancestors" in response.headers["content-security-policy"] or csp != API_CSP
    if hsts:
        assert response.headers["strict-transport-security"].startswith("max-age=")
    else:
        assert "strict-transport-security" not in response.headers


async def test_every_kind_of_answer_carries_the_headers(hub: Hub) -> None:
    customer = await hub.create_customer(name="Ann")
    answers = [
        await hub.api.get("/api/v1/customers"),  # 200
        await hub.api.get(f"/api/v1/customers/{customer['id']}"),
        await hub.anon.get("/api/v1/customers"),  # 401
        await hub.api.delete(f"/api/v1/customers/{customer['id']}"),  # 403
        await hub.api.get("/api/v1/customers/nobody"),  # 404 of the API
        await hub.anon.get("/no/such/path"),  # 404 of the router
        await hub.anon.put("/api/v1/customers"),  # 405
        await hub.api.post("/api/v1/customers", content=b"{"),  # 400
        await hub.anon.post("/webhooks/twilio/sms", data={"a": "b"}),  # webhook, channel off
        await hub.anon.get("/openapi.json"),
        await hub.anon.get("/"),
        await hub.anon.get("/healthz"),
    ]
    for response in answers:
        assert_hardened(response)


async def test_a_route_s_own_policy_is_kept(hub: Hub) -> None:
    customer = await hub.create_customer(name="Ann")
    upload = await hub.api.post(
        f"/api/v1/customers/{customer['id']}/documents",
        files={"file": ("a.html", b"<script>alert(1)</script>", "text/html")},
    )
    assert upload.status_code == 201, upload.text
    download = await hub.api.get(upload.json()["document"]["url"])
    assert download.status_code == 200
    assert_hardened(download, csp="default-src 'none'; sandbox")


def _boom(request: Request) -> Response:
    raise RuntimeError("boom")


async def test_unhandled_errors_and_hsts() -> None:
    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": {"code": "internal", "message": "x"}}, status_code=500)

    app = HardenedStarlette(
        https=True,
        routes=[Route("/ok", ok), Route("/boom", _boom)],
        exception_handlers={Exception: server_error},
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="https://hub.test") as client:
        assert_hardened(await client.get("/ok"), hsts=True)
        broken = await client.get("/boom")
        assert broken.status_code == 500
        assert_hardened(broken, hsts=True)


@pytest.mark.parametrize(("public_url", "hsts"), [("https://hub.example", True), (BASE_URL, False)])
async def test_hsts_follows_the_public_url(tmp_path: Path, public_url: str, hsts: bool) -> None:
    settings = hub_settings(
        f"sqlite+aiosqlite:///{tmp_path}/hub.db", tmp_path, public_url=public_url
    )
    app = create_app(settings, run_workers=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=public_url) as client:
        assert_hardened(await client.get("/"), hsts=hsts)
