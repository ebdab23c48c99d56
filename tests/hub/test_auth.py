"""Bearer tokens on the read endpoints, whose token check shares the handler's connection.

``GET /api/v1/customers/{id}`` and ``.../timeline`` look the token up on the connection
they then read with (``Endpoint.reads``). No token is cached: a token revoked, or an
agent disabled, by another process (here: another Database on the same database) is
refused from the very next request.
"""

from __future__ import annotations

import sqlalchemy as sa

from hub.auth import add_agent, hash_token
from tests.hub.conftest import Hub, assert_error
from timeline.db import Database
from timeline.events import utcnow
from timeline.schema import agents, api_tokens


async def _other_process(hub: Hub) -> Database:
    return Database.from_url(hub.settings.database_url)


async def test_revocation_elsewhere_takes_effect_at_once(hub: Hub) -> None:
    customer = await hub.create_customer(name="Pat")
    await hub.note(customer["id"], "hello")
    other = await _other_process(hub)
    try:
        async with other.write() as conn:
            _, token = await add_agent(conn, email="temp@hub.example", role="agent")
        headers = {"Authorization": f"Bearer {token}"}
        for path in (
            f"/api/v1/customers/{customer['id']}",
            f"/api/v1/customers/{customer['id']}/timeline",
        ):
            assert (await hub.api.get(path, headers=headers)).status_code == 200
        async with other.write() as conn:
            await conn.execute(
                api_tokens.update()
                .where(api_tokens.c.token_hash == hash_token(token))
                .values(revoked_at=utcnow())
            )
        for path in (
            f"/api/v1/customers/{customer['id']}",
            f"/api/v1/customers/{customer['id']}/timeline",
        ):
            response = await hub.api.get(path, headers=headers)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].lower().startswith("bearer")
    finally:
        await other.dispose()


async def test_a_disabled_agent_is_refused_at_once(hub: Hub) -> None:
    customer = await hub.create_customer(name="Pat")
    path = f"/api/v1/customers/{customer['id']}/timeline"
    other = await _other_process(hub)
    try:
        async with other.write() as conn:
            agent_id, token = await add_agent(conn, email="gone@hub.example", role="agent")
        headers = {"Authorization": f"Bearer {token}"}
        page = await hub.api.get(path, headers=headers)
        assert page.status_code == 200 and page.json() == {"items": [], "next": None}
        async with other.write() as conn:
            await conn.execute(
                agents.update().where(agents.c.id == agent_id).values(disabled_at=utcnow())
            )
        assert_error(await hub.api.get(path, headers=headers), 401, "unauthorized")
    finally:
        await other.dispose()


async def test_read_endpoints_record_the_token_s_use(hub: Hub) -> None:
    customer = await hub.create_customer(name="Pat")
    async with hub.db.write() as conn:
        _, token = await add_agent(conn, email="reader@hub.example", role="agent")
    where = api_tokens.c.token_hash == hash_token(token)
    query = sa.select(api_tokens.c.last_used_at).where(where)
    async with hub.db.read() as conn:
        assert (await conn.execute(query)).scalar_one() is None
    headers = {"Authorization": f"Bearer {token}"}
    response = await hub.api.get(f"/api/v1/customers/{customer['id']}/timeline", headers=headers)
    assert response.status_code == 200
    async with hub.db.read() as conn:
        assert (await conn.execute(query)).scalar_one() is not None


async def test_read_endpoints_answer_401_and_403_as_before(hub: Hub) -> None:
    customer = await hub.create_customer(name="Pat")
    path = f"/api/v1/customers/{customer['id']}/timeline"
    assert_error(await hub.anon.get(path), 401, "unauthorized")
    bad = {"Authorization": "Bearer chub_not-a-token"}
    assert_error(await hub.anon.get(path, headers=bad), 401, "unauthorized")
    assert_error(await hub.anon.get(path, headers={"Authorization": "Basic x"}), 401)
    # An unknown customer is 404 on both, with a valid token.
    assert_error(await hub.api.get("/api/v1/customers/nope/timeline"), 404, "not_found")
    assert_error(await hub.api.get("/api/v1/customers/nope"), 404, "not_found")


async def test_a_first_page_is_shown_only_to_those_who_see_the_customer(hub: Hub) -> None:
    """The first page's reads go with the token lookup; teams still decide who sees it."""
    async with hub.db.write() as conn:
        _, team_a = await add_agent(conn, email="a@hub.example", role="agent", team="A")
        _, team_b = await add_agent(conn, email="b@hub.example", role="agent", team="B")
    customer = await hub.create_customer(name="Pat")
    path = f"/api/v1/customers/{customer['id']}/timeline"
    for n in range(3):
        await hub.note(customer["id"], f"note {n}")
    everyone = {"A": {"Authorization": f"Bearer {team_a}"}}
    everyone["B"] = {"Authorization": f"Bearer {team_b}"}
    everyone["no team"] = hub.auth("agent")
    everyone["supervisor"] = hub.auth("supervisor")
    for headers in everyone.values():  # unassigned: every agent sees it
        page = await hub.api.get(path, params={"limit": 2}, headers=headers)
        assert page.status_code == 200, page.text
        assert [e["text"] for e in page.json()["items"]] == ["note 2", "note 1"]
        assert page.json()["next"]
    patched = await hub.api.patch(
        f"/api/v1/customers/{customer['id']}", json={"teams": ["B"]}, headers=everyone["supervisor"]
    )
    assert patched.status_code == 200, patched.text
    for who in ("A", "no team"):
        assert_error(await hub.api.get(path, headers=everyone[who]), 404, "not_found")
    for who in ("B", "supervisor"):
        page = await hub.api.get(path, headers=everyone[who])
        assert [e["text"] for e in page.json()["items"]] == ["note 2", "note 1", "note 0"]
    # The token is checked before the query: no token is 401 whatever the limit.
    assert_error(await hub.anon.get(path, params={"limit": "x"}), 401, "unauthorized")
    assert_error(await hub.api.get(path, params={"limit": "x"}, headers=everyone["B"]), 422)
    assert_error(await hub.api.get(path, params={"limit": 0}, headers=everyone["B"]), 422)
