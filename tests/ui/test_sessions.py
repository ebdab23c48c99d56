"""Console sessions and CSRF on SQLite and PostgreSQL: login, refusals, logout, expiry."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from hub.app import create_app
from hub.auth import add_agent
from hub.sessions import SessionStore
from tests.hub.conftest import hub_settings
from timeline.events import utcnow

BASE = "http://hub.test"
PASSWORD = "correct horse battery"


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[Starlette]:
    """The hub with an agent who has a console password."""
    application = create_app(hub_settings(database_url, tmp_path / "files"), run_workers=False)
    async with application.router.lifespan_context(application):
        async with application.state.services.db.write() as conn:
            await add_agent(conn, email="ada@hub.example", role="agent", password=PASSWORD)
        yield application


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE, headers={"Origin": BASE}
    )


def hidden_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def log_in(http: httpx.AsyncClient, password: str = PASSWORD) -> httpx.Response:
    form = await http.get("/ui/login")
    assert form.status_code == 200
    return await http.post(
        "/ui/login",
        data={
            "email": "ada@hub.example",
            "password": password,
            "csrf_token": hidden_token(form.text),
        },
    )


async def test_login_makes_a_new_http_only_lax_session(app: Starlette) -> None:
    async with client(app) as http:
        http.cookies.set("commhub_session", "planted-by-an-attacker", domain="hub.test")
        answer = await log_in(http)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
        cookie = next(
            h for h in answer.headers.get_list("set-cookie") if h.startswith("commhub_session=")
        )
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        assert "planted" not in cookie
        home = await http.get("/ui/")
        assert home.status_code == 200 and "Find a customer" in home.text
        csp = home.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp or "unsafe-inline" not in csp


async def test_https_hub_uses_a_host_prefixed_secure_cookie(
    database_url: str, tmp_path: Path
) -> None:
    settings = hub_settings(database_url, tmp_path / "f", public_url="https://hub.test")
    application = create_app(settings, run_workers=False)
    async with application.router.lifespan_context(application):
        async with application.state.services.db.write() as conn:
            await add_agent(conn, email="ada@hub.example", role="agent", password=PASSWORD)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application),
            base_url="https://hub.test",
            headers={"Origin": "https://hub.test"},
        ) as http:
            answer = await log_in(http)
            assert answer.status_code == 303
            cookie = next(
                h for h in answer.headers.get_list("set-cookie") if "commhub_session=" in h
            )
            assert cookie.startswith("__Host-commhub_session=")
            assert "Secure" in cookie and "Domain" not in cookie


async def test_a_wrong_password_is_refused(app: Starlette) -> None:
    async with client(app) as http:
        answer = await log_in(http, "not the password")
        assert answer.status_code == 401 and "Wrong email or password" in answer.text
        assert (await http.get("/ui/")).status_code == 303


async def test_login_needs_its_csrf_token_and_our_origin(app: Starlette) -> None:
    async with client(app) as http:
        await http.get("/ui/login")
        data = {"email": "ada@hub.example", "password": PASSWORD}
        assert (await http.post("/ui/login", data=data)).status_code == 403
        form = await http.get("/ui/login")
        data["csrf_token"] = hidden_token(form.text)
        foreign = await http.post("/ui/login", data=data, headers={"Origin": "https://evil.test"})
        assert foreign.status_code == 403


async def test_posts_need_the_csrf_token_and_our_origin(app: Starlette) -> None:
    async with client(app) as http:
        await log_in(http)
        token = hidden_token((await http.get("/ui/")).text)
        created = await http.post(
            "/api/v1/customers", json={"name": "x"}, headers={"Authorization": "Bearer nope"}
        )
        assert created.status_code == 401
        missing = await http.post("/ui/logout", data={})
        assert missing.status_code == 403
        wrong = await http.post("/ui/logout", data={"csrf_token": "x" + token})
        assert wrong.status_code == 403
        foreign = await http.post(
            "/ui/logout", data={"csrf_token": token}, headers={"Origin": "https://evil.test"}
        )
        assert foreign.status_code == 403
        no_origin = await http.post(
            "/ui/logout", data={"csrf_token": token}, headers={"Origin": ""}
        )
        assert no_origin.status_code == 403
        assert (await http.get("/ui/")).status_code == 200  # still logged in
        by_header = await http.post("/ui/logout", headers={"X-CSRF-Token": token})
        assert by_header.status_code == 303


async def test_logout_ends_the_session(app: Starlette) -> None:
    async with client(app) as http:
        await log_in(http)
        cookie = http.cookies["commhub_session"]
        token = hidden_token((await http.get("/ui/")).text)
        assert (await http.post("/ui/logout", data={"csrf_token": token})).status_code == 303
        assert (await http.get("/ui/")).status_code == 303
    async with client(app) as replay:  # the old cookie, kept by an attacker
        replay.cookies.set("commhub_session", cookie, domain="hub.test")
        assert (await replay.get("/ui/")).status_code == 303
        stream = await replay.get("/ui/stream")
        assert stream.status_code == 401


async def test_idle_and_absolute_expiry(app: Starlette) -> None:
    db = app.state.services.db
    now = [utcnow()]
    store = SessionStore(db, clock=lambda: now[0])
    async with db.read() as conn:
        import sqlalchemy as sa

        from timeline.schema import agents

        agent_id = (await conn.execute(sa.select(agents.c.id))).scalar_one()
    idle = await store.create(agent_id)
    assert await store.get(idle) is not None
    now[0] += timedelta(minutes=29)
    assert await store.get(idle) is not None  # activity: the idle clock starts again
    now[0] += timedelta(minutes=29)
    assert await store.get(idle) is not None
    now[0] += timedelta(minutes=31)
    assert await store.get(idle) is None
    busy = await store.create(agent_id)
    for _ in range(26):  # active every 28 minutes, for more than 12 hours
        now[0] += timedelta(minutes=28)
        if await store.get(busy) is None:
            break
    else:
        pytest.fail("the session outlived its absolute expiry")
    assert now[0] - timedelta(hours=12) >= utcnow() - timedelta(minutes=28)
