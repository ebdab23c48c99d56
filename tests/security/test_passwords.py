"""Password changes end sessions (RELIABILITY 37), login throttling and login audit records.

Each test runs on SQLite and PostgreSQL (``database_url``), against the real app through
``httpx.ASGITransport``; the CLI test runs ``run.py`` as a process.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from hub import throttle
from hub.app import create_app
from hub.auth import add_agent, check_password
from tests.hub.conftest import hub_settings
from timeline.db import Database
from timeline.events import utcnow
from timeline.schema import agents, audit_log, console_sessions, login_throttle

BASE = "http://hub.test"
PASSWORD = "correct horse battery"
NEW = "another long passphrase"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[Starlette]:
    """The hub with an agent (ada) and an admin, both with console passwords."""
    application = create_app(hub_settings(database_url, tmp_path / "files"), run_workers=False)
    async with application.router.lifespan_context(application):
        async with application.state.services.db.write() as conn:
            ada, ada_token = await add_agent(
                conn, email="ada@hub.example", role="agent", password=PASSWORD
            )
            _, admin_token = await add_agent(
                conn, email="root@hub.example", role="admin", password=PASSWORD
            )
        application.state.test_ids = {"ada": ada}
        application.state.test_tokens = {"ada": ada_token, "admin": admin_token}
        yield application


def db_of(app: Starlette) -> Database:
    db: Database = app.state.services.db
    return db


def client(app: Starlette, ip: str = "203.0.113.7") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(ip, 4711)),
        base_url=BASE,
        headers={"Origin": BASE},
    )


def hidden_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def log_in(
    http: httpx.AsyncClient, password: str = PASSWORD, email: str = "ada@hub.example"
) -> httpx.Response:
    form = await http.get("/ui/login")
    assert form.status_code == 200
    return await http.post(
        "/ui/login",
        data={"email": email, "password": password, "csrf_token": hidden_token(form.text)},
    )


async def audit_rows(app: Starlette, action: str) -> list[Any]:
    async with db_of(app).read() as conn:
        rows = await conn.execute(
            sa.select(audit_log).where(audit_log.c.action == action).order_by(audit_log.c.at)
        )
        return list(rows.mappings())


async def sessions_of(app: Starlette, agent_id: str) -> int:
    async with db_of(app).read() as conn:
        query = sa.select(sa.func.count()).where(console_sessions.c.agent_id == agent_id)
        return int((await conn.execute(query)).scalar_one())


async def change_in_console(
    http: httpx.AsyncClient, current: str, new: str, confirm: str | None = None
) -> httpx.Response:
    form = await http.get("/ui/account/password")
    assert form.status_code == 200, form.text
    return await http.post(
        "/ui/account/password",
        data={
            "csrf_token": hidden_token(form.text),
            "current_password": current,
            "new_password": new,
            "confirm_password": new if confirm is None else confirm,
        },
    )


# -- password change ---------------------------------------------------------------------------


async def test_console_change_ends_every_other_session_and_renews_this_one(
    app: Starlette,
) -> None:
    ada = app.state.test_ids["ada"]
    async with client(app) as here, client(app, "198.51.100.9") as elsewhere:
        assert (await log_in(here)).status_code == 303
        assert (await log_in(elsewhere)).status_code == 303
        old_cookie = here.cookies.get("commhub_session")
        assert await sessions_of(app, ada) == 2

        changed = await change_in_console(here, PASSWORD, NEW)
        assert changed.status_code == 200, changed.text
        assert 'id="password-done"' in changed.text
        new_cookie = changed.cookies.get("commhub_session")
        assert new_cookie and new_cookie != old_cookie
        # The other browser's session is over; this browser goes on with its new one.
        assert (await elsewhere.get("/ui/")).status_code == 303
        assert (await here.get("/ui/")).status_code == 200
        assert await sessions_of(app, ada) == 1
        # The old cookie value is dead too.
        async with client(app) as replay:
            replay.cookies.set("commhub_session", str(old_cookie), domain="hub.test")
            assert (await replay.get("/ui/")).status_code == 303

    async with db_of(app).read() as conn:
        stored = (
            await conn.execute(sa.select(agents.c.password_hash).where(agents.c.id == ada))
        ).scalar_one()
    assert check_password(stored, NEW) and not check_password(stored, PASSWORD)
    records = await audit_rows(app, "password.change")
    assert len(records) == 1
    assert records[0]["agent_id"] == ada and records[0]["ip"] == "203.0.113.7"
    assert records[0]["detail"] == {"agent": ada, "sessions_ended": 2}
    assert PASSWORD not in str(records[0]) and NEW not in str(records[0])
    async with client(app) as fresh:
        assert (await log_in(fresh, PASSWORD)).status_code == 401
        assert (await log_in(fresh, NEW)).status_code == 303


async def test_console_change_refusals(app: Starlette) -> None:
    async with client(app) as http:
        await log_in(http)
        wrong = await change_in_console(http, "not the password", NEW)
        assert wrong.status_code == 422 and "current password is wrong" in wrong.text
        short = await change_in_console(http, PASSWORD, "short")
        assert short.status_code == 422 and "at least 8" in short.text
        differ = await change_in_console(http, PASSWORD, NEW, confirm=NEW + "x")
        assert differ.status_code == 422 and "differ" in differ.text
        # Without the CSRF token, nothing changes.
        bare = await http.post(
            "/ui/account/password",
            data={"current_password": PASSWORD, "new_password": NEW, "confirm_password": NEW},
        )
        assert bare.status_code == 403
        assert (await http.get("/ui/")).status_code == 200  # still logged in
    assert await audit_rows(app, "password.change") == []
    assert len(await audit_rows(app, "password.change.failed")) == 1


async def test_api_change_needs_the_current_password_and_ends_console_sessions(
    app: Starlette,
) -> None:
    ada = app.state.test_ids["ada"]
    token = {"Authorization": f"Bearer {app.state.test_tokens['ada']}"}
    async with client(app) as browser, client(app) as api:
        await log_in(browser)
        wrong = await api.post(
            "/api/v1/agents/me/password",
            json={"current_password": "nope", "new_password": NEW},
            headers=token,
        )
        assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "wrong_password"
        assert (await browser.get("/ui/")).status_code == 200
        short = await api.post(
            "/api/v1/agents/me/password",
            json={"current_password": PASSWORD, "new_password": "x"},
            headers=token,
        )
        assert short.status_code == 422
        same_as_email = await api.post(
            "/api/v1/agents/me/password",
            json={"current_password": PASSWORD, "new_password": "ADA@hub.example"},
            headers=token,
        )
        assert same_as_email.status_code == 422
        done = await api.post(
            "/api/v1/agents/me/password",
            json={"current_password": PASSWORD, "new_password": NEW},
            headers=token,
        )
        assert done.status_code == 200, done.text
        assert done.json() == {"agent_id": ada, "sessions_ended": 1}
        assert (await browser.get("/ui/")).status_code == 303
        # The API token is a separate credential and still works.
        assert (await api.get("/api/v1/agents/me", headers=token)).status_code == 200


async def test_admin_resets_another_agents_password(app: Starlette) -> None:
    ada = app.state.test_ids["ada"]
    admin = {"Authorization": f"Bearer {app.state.test_tokens['admin']}"}
    agent = {"Authorization": f"Bearer {app.state.test_tokens['ada']}"}
    async with client(app) as browser, client(app) as api:
        await log_in(browser)
        refused = await api.post(
            f"/api/v1/agents/{ada}/password", json={"new_password": NEW}, headers=agent
        )
        assert refused.status_code == 403
        missing = await api.post(
            "/api/v1/agents/nobody/password", json={"new_password": NEW}, headers=admin
        )
        assert missing.status_code == 404
        me = (await api.get("/api/v1/agents/me", headers=admin)).json()["id"]
        own = await api.post(
            f"/api/v1/agents/{me}/password", json={"new_password": NEW}, headers=admin
        )
        assert own.status_code == 409
        reset = await api.post(
            f"/api/v1/agents/{ada}/password", json={"new_password": NEW}, headers=admin
        )
        assert reset.status_code == 200 and reset.json()["sessions_ended"] == 1
        assert (await browser.get("/ui/")).status_code == 303
    records = await audit_rows(app, "password.reset")
    assert len(records) == 1 and records[0]["agent_id"] == me
    assert records[0]["detail"]["agent"] == ada


async def test_cli_passwd_ends_sessions(database_url: str, tmp_path: Path) -> None:
    settings = hub_settings(database_url, tmp_path / "files")
    application = create_app(settings, run_workers=False)
    async with application.router.lifespan_context(application):
        async with db_of(application).write() as conn:
            ada, _ = await add_agent(conn, email="ada@hub.example", role="agent", password=PASSWORD)
        async with client(application) as browser:
            await log_in(browser)
            env = {
                **os.environ,
                "HUB_DATABASE_URL": database_url,
                "HUB_DATA_DIR": str(tmp_path / "files"),
                "HUB_SECRET_KEY": "x" * 40,
            }
            run = [sys.executable, str(ROOT / "run.py"), "agent", "passwd"]

            async def passwd(email: str, password: str) -> subprocess.CompletedProcess[str]:
                return await asyncio.to_thread(
                    subprocess.run,
                    [*run, email, "--password-stdin"],
                    input=password + "\n",
                    env=env,
                    capture_output=True,
                    text=True,
                    cwd=tmp_path,
                    timeout=60,
                )

            done = await passwd("ADA@hub.example", NEW)
            assert done.returncode == 0, done.stderr
            assert "1 console session(s) ended" in done.stdout
            assert NEW not in done.stdout + done.stderr
            assert (await browser.get("/ui/")).status_code == 303
            assert (await log_in(browser, NEW)).status_code == 303
            short = await passwd("ada@hub.example", "short")
            assert short.returncode == 2 and "at least 8" in short.stderr
            unknown = await passwd("nobody@hub.example", NEW)
            assert unknown.returncode == 2 and "no active agent" in unknown.stderr
        records = await audit_rows(application, "password.reset")
        assert len(records) == 1 and records[0]["agent_id"] is None
        assert records[0]["detail"] == {"agent": ada, "sessions_ended": 1}


# -- login audit and throttling ---------------------------------------------------------------


async def test_logins_and_logouts_are_audited_without_the_password(app: Starlette) -> None:
    ada = app.state.test_ids["ada"]
    async with client(app) as http:
        assert (await log_in(http, "wrong horse\r\nFAKE login")).status_code == 401
        assert (await log_in(http, PASSWORD, email="ghost@hub.example")).status_code == 401
        assert (await log_in(http)).status_code == 303
        token = hidden_token((await http.get("/ui/")).text)
        assert (await http.post("/ui/logout", data={"csrf_token": token})).status_code == 303
    failed = await audit_rows(app, "login.failed")
    assert [(r["agent_id"], r["detail"]["reason"]) for r in failed] == [
        (ada, "wrong_password"),
        (None, "unknown_account"),
    ]
    assert all(r["ip"] == "203.0.113.7" for r in failed)
    assert "horse" not in str(failed) and "ghost" not in str(failed)
    (login,) = await audit_rows(app, "login")
    assert login["agent_id"] == ada and login["ip"] == "203.0.113.7"
    (logout,) = await audit_rows(app, "logout")
    assert logout["agent_id"] == ada


async def test_an_account_is_throttled_with_429_and_retry_after(app: Starlette) -> None:
    async with client(app, "203.0.113.1") as http:
        answers = [await log_in(http, f"guess {n}") for n in range(throttle.ACCOUNT_LIMIT)]
        assert [a.status_code for a in answers] == [401] * (throttle.ACCOUNT_LIMIT - 1) + [429]
        # Now even the right password is refused, without being checked.
        blocked = await log_in(http, PASSWORD)
        assert blocked.status_code == 429
        retry = int(blocked.headers["retry-after"])
        assert 0 < retry <= throttle.BLOCK.total_seconds()
        assert "Too many failed logins" in blocked.text
    # From another address the account is blocked too (the count is per account) ...
    async with client(app, "203.0.113.2") as other:
        assert (await log_in(other, PASSWORD)).status_code == 429
        # ... but another account from there is not.
        assert (await log_in(other, PASSWORD, email="root@hub.example")).status_code == 303
    assert len(await audit_rows(app, "login.throttled")) == 2
    # Once the block is over, the right password works and clears the count.
    async with db_of(app).write() as conn:
        await conn.execute(
            login_throttle.update().values(blocked_until=utcnow(), first_at=utcnow())
        )
    async with client(app, "203.0.113.1") as http:
        assert (await log_in(http, PASSWORD)).status_code == 303
    key = throttle.account_key("ada@hub.example")
    async with db_of(app).read() as conn:
        left = await conn.execute(
            sa.select(login_throttle.c.key).where(login_throttle.c.key == key)
        )
        assert left.first() is None


async def test_an_address_is_throttled_across_accounts(app: Starlette) -> None:
    async with client(app, "192.0.2.50") as http:
        for n in range(throttle.ADDRESS_LIMIT - 1):
            answer = await log_in(http, PASSWORD, email=f"user{n}@hub.example")
            assert answer.status_code == 401
        last = await log_in(http, PASSWORD, email="someone@hub.example")
        assert last.status_code == 429 and "retry-after" in last.headers
        assert (await log_in(http, PASSWORD)).status_code == 429
    async with client(app, "192.0.2.51") as elsewhere:
        assert (await log_in(elsewhere, PASSWORD)).status_code == 303


async def test_throttle_state_is_shared_through_the_database(database_url: str) -> None:
    """Two Database objects (as two processes have) see one count; windows expire."""
    from timeline.migrate import upgrade

    first, second = Database.from_url(database_url), Database.from_url(database_url)
    try:
        await upgrade(first)
        keys = throttle.keys_for("Eve@Hub.example", "198.51.100.1")
        start = utcnow()
        for n in range(throttle.ACCOUNT_LIMIT - 1):
            db = first if n % 2 else second
            assert await throttle.record_failure(db, keys, now=start) == 0
        assert await throttle.blocked_for(first, keys, now=start) == 0
        assert await throttle.record_failure(second, keys, now=start) > 0
        assert await throttle.blocked_for(first, keys[:1], now=start) > 0
        later = start + throttle.BLOCK + throttle.WINDOW
        assert await throttle.blocked_for(second, keys, now=later) == 0
        # A failure after the window starts a new count.
        assert await throttle.record_failure(first, keys, now=later) == 0
        async with first.read() as conn:
            failures = (
                await conn.execute(
                    sa.select(login_throttle.c.failures).where(login_throttle.c.key == keys[0])
                )
            ).scalar_one()
        assert failures == 1
        # The table never holds the email itself.
        async with first.read() as conn:
            stored = " ".join((await conn.execute(sa.select(login_throttle.c.key))).scalars())
        assert "eve" not in stored.lower()
    finally:
        await first.dispose()
        await second.dispose()


async def test_api_password_guesses_are_throttled(app: Starlette) -> None:
    token = {"Authorization": f"Bearer {app.state.test_tokens['ada']}"}
    async with client(app) as api:
        codes = []
        for n in range(throttle.ACCOUNT_LIMIT + 1):
            answer = await api.post(
                "/api/v1/agents/me/password",
                json={"current_password": f"guess {n}", "new_password": NEW},
                headers=token,
            )
            codes.append(answer.status_code)
        assert codes == [422] * (throttle.ACCOUNT_LIMIT - 1) + [429, 429]
        assert int(answer.headers["retry-after"]) > 0
        assert answer.json()["error"]["code"] == "too_many_attempts"
