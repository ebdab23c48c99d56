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
