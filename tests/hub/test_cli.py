"""The command line (CONTRACT.md): ``python run.py ...`` as a subprocess, as operators run it.

Each run gets an environment without any of the hub's settings but those the test gives,
and a working folder of its own (so the default ``./var`` never lands in the repository).
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from config.fields import FIELDS
from hub.app import create_app
from hub.auth import check_password
from tests.hub.conftest import BASE_URL, OpenApiChecker, checking_hook, fetch_schema, hub_settings
from timeline.schema import agents

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "run.py"
TOKEN = re.compile(r"^chub_[A-Za-z0-9_-]{40,}$")
SETTING_NAMES = {f.env for f in FIELDS} | {"HUB_CONFIG"}


def clean_env(**settings: str) -> dict[str, str]:
    """The test process's environment without hub settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(settings)
    return env


def run(
    cwd: Path,
    *args: str,
    stdin: str | None = None,
    timeout: float = 30,
    env: dict[str, str] | None = None,
    **settings: str,
) -> subprocess.CompletedProcess[str]:
    """``python run.py ARGS`` in ``cwd`` with the given settings (``env`` and keywords)."""
    return subprocess.run(
        [sys.executable, str(RUN), *args],
        cwd=cwd,
        env=clean_env(**(env or {}), **settings),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sqlite_url(folder: Path) -> str:
    return f"sqlite+aiosqlite:///{folder}/hub.db"


def assert_usage_error(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit status 2 and exactly one line on stderr, naming each of ``names``."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_migrate_a_fresh_sqlite_database(tmp_path: Path) -> None:
    result = run(tmp_path, "migrate", HUB_DATABASE_URL=sqlite_url(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"alembic_version", "customers", "events", "agents"} <= tables
    again = run(tmp_path, "migrate", HUB_DATABASE_URL=sqlite_url(tmp_path))
    assert again.returncode == 0, again.stderr


async def test_agent_add_prints_a_working_token_last(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    result = run(tmp_path, "agent", "add", "a@b.example", "--role", "admin", HUB_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    token = lines[-1]
    assert TOKEN.match(token), result.stdout
    assert token not in "\n".join(lines[:-1])

    app = create_app(hub_settings(url, tmp_path / "files"), run_workers=False)
    async with app.router.lifespan_context(app):
        checker = OpenApiChecker(await fetch_schema(app))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url=BASE_URL,
            headers={"Authorization": f"Bearer {token}"},
            event_hooks={"response": [checking_hook(checker)]},
        ) as client:
            listed = await client.get("/api/v1/customers")
            assert listed.status_code == 200, listed.text
            # Admin role: erasure is allowed (404 for an unknown id, not 403).
            erased = await client.delete("/api/v1/customers/01a2060f32c17df3882dce5c03e65d5b")
            assert erased.status_code == 404, erased.text
            wrong = await client.get(
                "/api/v1/customers", headers={"Authorization": f"Bearer {token[:-1]}x"}
            )
            assert wrong.status_code == 401
        async with app.state.services.db.read() as conn:
            row = (
                await conn.execute(sa.select(agents).where(agents.c.email == "a@b.example"))
            ).one()
        assert row.role == "admin"
        assert row.password_hash is None


async def test_agent_add_reads_a_password_from_stdin(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    result = run(
        tmp_path,
        "agent",
        "add",
        "sup@b.example",
        "--role",
        "supervisor",
        "--name",
        "Sue Pervisor",
        "--team",
        "north",
        "--password-stdin",
        stdin="correct horse battery staple\n",
        HUB_DATABASE_URL=url,
    )
    assert result.returncode == 0, result.stderr
    assert TOKEN.match(result.stdout.splitlines()[-1]), result.stdout
    assert "correct horse" not in result.stdout + result.stderr
    from timeline.db import Database

    db = Database.from_url(url)
    try:
        async with db.read() as conn:
            row = (
                await conn.execute(sa.select(agents).where(agents.c.email == "sup@b.example"))
            ).one()
    finally:
        await db.dispose()
    assert (row.role, row.name, row.team) == ("supervisor", "Sue Pervisor", "north")
    assert check_password(row.password_hash, "correct horse battery staple")
    assert not check_password(row.password_hash, "correct horse battery staple\n")

    short = run(
        tmp_path,
        "agent",
        "add",
        "c@b.example",
        "--role",
        "agent",
        "--password-stdin",
        stdin="short\n",
        HUB_DATABASE_URL=url,
    )
    assert_usage_error(short, "password")
    duplicate = run(
        tmp_path, "agent", "add", "sup@b.example", "--role", "agent", HUB_DATABASE_URL=url
    )
    assert_usage_error(duplicate, "sup@b.example")


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"HUB_DEFAULT_REGION": "XX"}, "HUB_DEFAULT_REGION"),
        ({"TWILIO_ACCOUNT_SID": "AC" + "0" * 32}, "TWILIO_AUTH_TOKEN"),
        ({"HUB_TIMEZONE": "Mars/Olympus_Mons"}, "HUB_TIMEZONE"),
        ({"HUB_MAX_UPLOAD_BYTES": "lots"}, "HUB_MAX_UPLOAD_BYTES"),
    ],
)
def test_a_bad_setting_exits_2_naming_it(
    tmp_path: Path, settings: dict[str, str], named: str
) -> None:
    result = run(tmp_path, "migrate", env=settings, HUB_DATABASE_URL=sqlite_url(tmp_path))
    assert_usage_error(result, named)
    assert not (tmp_path / "hub.db").exists()
    # A secret given alongside is never echoed.
    leaked = run(
        tmp_path,
        "migrate",
        HUB_DATABASE_URL=sqlite_url(tmp_path),
        TWILIO_AUTH_TOKEN="s3cr3t-auth-token-value",
        HUB_SECRET_KEY="k" * 40,
        env=settings,
    )
    assert leaked.returncode == 2
    assert "s3cr3t-auth-token-value" not in leaked.stderr + leaked.stdout
    assert "k" * 40 not in leaked.stderr + leaked.stdout


def test_serve_without_a_secret_key_exits_2_naming_it(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "serve",
        "--port",
        "9",  # never bound: the check comes first
        timeout=20,
        HUB_DATABASE_URL=sqlite_url(tmp_path),
    )
    assert_usage_error(result, "HUB_SECRET_KEY")


def test_config_env_example_matches_the_committed_file(tmp_path: Path) -> None:
    result = run(tmp_path, "config", "--env-example")
    assert result.returncode == 0, result.stderr
    assert "HUB_DATABASE_URL" in result.stdout
    assert "HUB_SECRET_KEY" in result.stdout
    committed = ROOT / ".env.example"
    assert result.stdout == committed.read_text(encoding="utf-8")
