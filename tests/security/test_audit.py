"""RELIABILITY 39: audit records for denials, exports, erasures, merges, tokens, roles and
agents made on the command line; CR/LF in input forges no log line (CWE-117)."""

from __future__ import annotations

import io
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from hub import audit
from hub.audit import EscapingFilter, escape_controls, install_log_escaping
from tests.hub.conftest import Hub, assert_error
from tests.hub.test_cli import run, sqlite_url
from timeline.db import Database
from timeline.schema import agents, api_tokens, audit_log


async def records(hub: Hub, **where: Any) -> list[dict[str, Any]]:
    """Audit rows straight from the database, oldest first."""
    async with hub.db.read() as conn:
        query = sa.select(audit_log).order_by(audit_log.c.at, audit_log.c.id)
        for name, value in where.items():
            query = query.where(audit_log.c[name] == value)
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def agent_id(hub: Hub, role: str) -> str:
    async with hub.db.read() as conn:
        found = await conn.execute(
            sa.select(agents.c.id).where(agents.c.email == f"{role}@hub.example")
        )
        return str(found.scalar_one())


async def test_denials_are_audited_with_agent_and_address(hub: Hub) -> None:
    assert_error(await hub.anon.get("/api/v1/customers"), 401)
    bad = await hub.anon.get("/api/v1/customers", headers={"Authorization": "Bearer chub_nope"})
    assert_error(bad, 401)
    customer = await hub.create_customer(name="Ann")
    assert_error(await hub.api.delete(f"/api/v1/customers/{customer['id']}"), 403)
    denied = await records(hub, action="access.denied")
    assert [r["detail"]["status"] for r in denied] == [401, 401, 403]
    assert denied[0]["agent_id"] is None
    assert denied[2]["agent_id"] == await agent_id(hub, "agent")
    assert denied[2]["detail"]["path"] == f"/api/v1/customers/{customer['id']}"
    assert all(r["ip"] for r in denied)
    assert "chub_nope" not in str(denied)  # a token tried is never kept


async def test_export_erasure_merge_and_undo_are_audited(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann", phones=["+4722000001"])
    bob = await hub.create_customer(name="Bob")
    merged = await hub.api.post(
        f"/api/v1/customers/{ann['id']}/merge", json={"other_id": bob["id"]}
    )
    assert merged.status_code == 200, merged.text
    merge_id = merged.json()["merge"]["id"]
    undone = await hub.api.post(f"/api/v1/merges/{merge_id}/undo", headers=hub.auth("supervisor"))
    assert undone.status_code == 200, undone.text
    export = await hub.api.get(
        f"/api/v1/customers/{ann['id']}/export", headers=hub.auth("supervisor")
    )
    assert export.status_code == 200
    erased = await hub.api.delete(f"/api/v1/customers/{ann['id']}", headers=hub.auth("admin"))
    assert erased.status_code == 200
    about_ann = await records(hub, customer_id=ann["id"])
    assert [r["action"] for r in about_ann] == [
        "customer.merge",
        "customer.unmerge",
        "customer.export",
        "customer.erase",
    ]
    assert about_ann[0]["detail"] == {"merge_id": merge_id, "other_id": bob["id"]}
    assert about_ann[0]["agent_id"] == await agent_id(hub, "agent")
    assert about_ann[3]["agent_id"] == await agent_id(hub, "admin")
    # Ids only: no name or phone number in the records of an erased customer.
    assert "Ann" not in str(about_ann) and "22000001" not in str(about_ann)


async def test_the_audit_api_is_for_admins_and_pages_by_keyset(hub: Hub) -> None:
    assert_error(await hub.api.get("/api/v1/audit"), 403)
    assert_error(await hub.api.get("/api/v1/audit", headers=hub.auth("supervisor")), 403)
    for _ in range(5):
        await hub.anon.get("/api/v1/customers")
    admin = hub.auth("admin")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "3", "action": "access.denied"}
        if cursor:
            params["cursor"] = cursor
        page = await hub.api.get("/api/v1/audit", params=params, headers=admin)
        assert page.status_code == 200, page.text
        seen += [item["id"] for item in page.json()["items"]]
        cursor = page.json()["next"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 7  # 5 anonymous + the agent's and supervisor's
    assert seen == sorted(seen, reverse=True)  # newest first
    mine = await hub.api.get(
        "/api/v1/audit", params={"agent_id": await agent_id(hub, "agent")}, headers=admin
    )
    assert [i["detail"]["status"] for i in mine.json()["items"]] == [403]
    none = await hub.api.get("/api/v1/audit", params={"customer_id": "x"}, headers=admin)
    assert none.json() == {"items": [], "next": None}
    assert_error(await hub.api.get("/api/v1/audit?cursor=bm9wZQ", headers=admin), 400)


async def test_record_takes_a_connection_or_the_database(hub: Hub) -> None:
    await audit.record(hub.db, "login", agent_id="a1", ip="10.0.0.1", detail={"how": "password"})
    async with hub.db.write() as conn:
        await audit.record(conn, "login.failed", detail={"reason": "password"})
    assert [r["action"] for r in await records(hub)] == ["login", "login.failed"]


async def test_agent_add_on_the_command_line_is_audited(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    result = run(tmp_path, "agent", "add", "x@hub.example", "--role", "agent", HUB_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    listed = run(tmp_path, "agent", "list", HUB_DATABASE_URL=url)
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    assert "x@hub.example" in line and "tokens=1" in line
    db = Database.from_url(url)
    try:
        async with db.read() as conn:
            rows = (await conn.execute(sa.select(audit_log))).mappings().all()
    finally:
        await db.dispose()
    assert [(r["action"], r["agent_id"], r["detail"]["role"]) for r in rows] == [
        ("agent.create", None, "agent")
    ]
    assert rows[0]["detail"]["agent"] == line.split()[0]
    db = Database.from_url(url)
    try:
        async with db.read() as conn:
            token_id = (await conn.execute(sa.select(api_tokens.c.id))).scalar_one()
    finally:
        await db.dispose()
    revoked = run(tmp_path, "agent", "revoke-token", token_id, HUB_DATABASE_URL=url)
    assert revoked.returncode == 0, revoked.stderr
    assert "tokens=0" in run(tmp_path, "agent", "list", HUB_DATABASE_URL=url).stdout
    twice = run(tmp_path, "agent", "revoke-token", token_id, HUB_DATABASE_URL=url)
    assert twice.returncode == 2 and len(twice.stderr.splitlines()) == 1


def test_control_characters_are_escaped() -> None:
    assert escape_controls("a\r\nFAKE b\x1b[31m\u2028") == "a\\r\\nFAKE b\\x1b[31m\\u2028"
    assert escape_controls("tab\tkept") == "tab\tkept"


def _one_handler_logger() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(f"tests.security.{id(out)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


def test_a_name_or_token_with_crlf_makes_one_log_line() -> None:
    install_log_escaping()
    logger, out = _one_handler_logger()
    logger.info("customer %s renamed", "Ann\r\nINFO hub: FAKE admin login")
    logger.warning("bad token %r", "chub_x\r\nFAKE")
    logger.info("message itself\nFAKE")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert all("FAKE" in line for line in lines)
    assert not any(line.startswith("FAKE") or line.startswith("INFO hub") for line in lines)


def test_the_filter_escapes_records_of_any_factory() -> None:
    logger, out = _one_handler_logger()
    logger.handlers[0].addFilter(EscapingFilter())
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "name %s", ("a\r\nFAKE",), None)
    logger.handle(record)
    assert out.getvalue().splitlines() == ["INFO x: name a\\r\\nFAKE"]


async def test_a_forged_path_makes_one_log_line(hub: Hub, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="hub.routing")
    # Straight to the ASGI app: HTTP clients refuse to send a raw CR/LF in a path, but a
    # percent-encoded one arrives decoded in the scope's path.
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/customers/x\r\nWARNING hub: FAKE",
        "raw_path": b"/api/v1/customers/x%0d%0aWARNING%20hub:%20FAKE",
        "query_string": b"",
        "headers": [(b"host", b"hub.test")],
        "client": ("127.0.0.1", 5000),
        "server": ("hub.test", 80),
        "root_path": "",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await hub.app(scope, receive, send)
    assert sent[0]["status"] == 401
    lines = caplog.text.splitlines()
    assert len(lines) == 1, lines
    assert "\\r\\nWARNING hub: FAKE" in lines[0]
    (denied,) = await records(hub, action="access.denied")
    assert denied["detail"]["path"] == "/api/v1/customers/x\r\nWARNING hub: FAKE"
