"""Token management (OWASP ASVS 5.0 V7.4): list with last use, issue (shown once, stored
hashed), revoke (401 at once); role changes by admins only, audited."""

from __future__ import annotations

import sqlalchemy as sa

from hub.auth import hash_token
from tests.hub.conftest import Hub, assert_error
from timeline.schema import api_tokens, audit_log


async def test_issue_use_list_and_revoke(hub: Hub) -> None:
    listed = await hub.api.get("/api/v1/agents/me/tokens")
    assert listed.status_code == 200, listed.text
    (first,) = listed.json()["items"]
    assert first["current"] is True and first["last_used_at"] is not None
    issued = await hub.api.post("/api/v1/agents/me/tokens")
    assert issued.status_code == 201, issued.text
    assert issued.headers["cache-control"] == "no-store"
    new = issued.json()
    async with hub.db.read() as conn:
        stored = (
            await conn.execute(
                sa.select(api_tokens.c.token_hash).where(api_tokens.c.id == new["id"])
            )
        ).scalar_one()
    assert stored == hash_token(new["token"]) != new["token"]
    other = {"Authorization": f"Bearer {new['token']}"}
    me = await hub.api.get("/api/v1/agents/me", headers=other)
    assert me.status_code == 200 and me.json()["role"] == "agent"
    both = (await hub.api.get("/api/v1/agents/me/tokens", headers=other)).json()["items"]
    assert [t["id"] for t in both] == [new["id"], first["id"]]
    assert [t["current"] for t in both] == [True, False]

    revoked = await hub.api.delete(f"/api/v1/agents/me/tokens/{new['id']}")
    assert revoked.status_code == 204
    assert_error(await hub.api.get("/api/v1/agents/me", headers=other), 401)
    again = await hub.api.delete(f"/api/v1/agents/me/tokens/{new['id']}")
    assert again.status_code == 204  # revoking twice changes nothing
    # Someone else's token is not found (nor revoked).
    admin_tokens = await hub.api.get("/api/v1/agents/me/tokens", headers=hub.auth("admin"))
    admin_token_id = admin_tokens.json()["items"][0]["id"]
    assert_error(await hub.api.delete(f"/api/v1/agents/me/tokens/{admin_token_id}"), 404)
    assert (await hub.api.get("/api/v1/agents/me", headers=hub.auth("admin"))).status_code == 200
    async with hub.db.read() as conn:
        actions = list(
            (await conn.execute(sa.select(audit_log.c.action).order_by(audit_log.c.at))).scalars()
        )
    assert actions.count("token.issue") == 1 and actions.count("token.revoke") == 1


async def test_role_changes_are_for_admins_and_audited(hub: Hub) -> None:
    me = (await hub.api.get("/api/v1/agents/me")).json()
    body = {"role": "supervisor"}
    assert_error(await hub.api.patch(f"/api/v1/agents/{me['id']}", json=body), 403)
    sup = hub.auth("supervisor")
    assert_error(await hub.api.patch(f"/api/v1/agents/{me['id']}", json=body, headers=sup), 403)
    admin = hub.auth("admin")
    changed = await hub.api.patch(f"/api/v1/agents/{me['id']}", json=body, headers=admin)
    assert changed.status_code == 200, changed.text
    assert changed.json()["role"] == "supervisor"
    # The new role holds at once: export needs supervisor.
    customer = await hub.create_customer(name="Ann")
    assert (await hub.api.get(f"/api/v1/customers/{customer['id']}/export")).status_code == 200
    admin_id = (await hub.api.get("/api/v1/agents/me", headers=admin)).json()["id"]
    self_demote = await hub.api.patch(
        f"/api/v1/agents/{admin_id}", json={"role": "agent"}, headers=admin
    )
    assert_error(self_demote, 409)
    assert_error(await hub.api.patch("/api/v1/agents/nobody", json=body, headers=admin), 404)
    assert_error(
        await hub.api.patch(f"/api/v1/agents/{me['id']}", json={"role": "god"}, headers=admin), 422
    )
    async with hub.db.read() as conn:
        (row,) = (
            await conn.execute(sa.select(audit_log).where(audit_log.c.action == "agent.role"))
        ).mappings()
    assert row["agent_id"] == admin_id
    assert row["detail"] == {"agent": me["id"], "role_from": "agent", "role_to": "supervisor"}
