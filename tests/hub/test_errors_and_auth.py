"""Health, authentication, roles, and the error answers of the agent API.

Every answer here also passes the schema check of ``conftest.checking_hook``.
"""

from __future__ import annotations

import re

from tests.hub.conftest import Hub, assert_error

MISSING = "01AAAAAAAAAAAAAAAAAAAAAAAA"


async def test_healthz_needs_no_token(hub: Hub) -> None:
    response = await hub.anon.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_index_and_openapi_need_no_token(hub: Hub) -> None:
    index = await hub.anon.get("/")
    assert index.status_code == 200
    assert index.json()["openapi"] == "/openapi.json"
    schema = await hub.anon.get("/openapi.json")
    assert schema.status_code == 200
    assert schema.json()["openapi"].startswith("3.1")


async def test_missing_token_is_401_with_www_authenticate(hub: Hub) -> None:
    response = await hub.anon.get("/api/v1/customers")
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].lower().startswith("bearer")


async def test_wrong_token_is_401(hub: Hub) -> None:
    for header in (
        "Bearer chub_not-a-real-token",
        "Bearer not-even-our-prefix",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        f"Bearer {hub.tokens['agent']}x",
    ):
        response = await hub.anon.get("/api/v1/customers", headers={"Authorization": header})
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].lower().startswith("bearer"), header


async def test_each_roles_token_works(hub: Hub) -> None:
    # Tokens differ per agent and each one works on its own.
    assert len(set(hub.tokens.values())) == 3
    for role in ("agent", "supervisor", "admin"):
        response = await hub.anon.get("/api/v1/customers", headers=hub.auth(role))
        assert response.status_code == 200, (role, response.text)


async def test_every_operation_needing_a_token_refuses_without_one(hub: Hub) -> None:
    """Swept over the schema, so operations added later are held to it too."""
    swept = 0
    for template, item in hub.schema["paths"].items():
        path = re.sub(r"\{[^}]+\}", MISSING, template)
        for method, operation in item.items():
            if operation.get("security") == []:
                continue
            for headers in ({}, {"Authorization": "Bearer chub_wrong"}):
                response = await hub.anon.request(method.upper(), path, headers=headers)
                assert_error(response, 401, "unauthorized")
                assert response.headers["www-authenticate"].lower().startswith("bearer")
            swept += 1
    assert swept >= 15


async def test_agent_role_cannot_export_erase_or_undo(hub: Hub) -> None:
    a = await hub.create_customer(name="Ann", phones=["+14155550100"])
    b = await hub.create_customer(name="Bob", phones=["+14155550101"])
    merged = await hub.api.post(f"/api/v1/customers/{a['id']}/merge", json={"other_id": b["id"]})
    assert merged.status_code == 200, merged.text
    merge_id = merged.json()["merge"]["id"]

    export = await hub.api.get(f"/api/v1/customers/{a['id']}/export")
    assert_error(export, 403, "forbidden")
    erase = await hub.api.delete(f"/api/v1/customers/{a['id']}")
    assert_error(erase, 403, "forbidden")
    undo = await hub.api.post(f"/api/v1/merges/{merge_id}/undo")
    assert_error(undo, 403, "forbidden")
    # A supervisor still cannot erase; nothing was changed by the refusals.
    erase = await hub.api.delete(f"/api/v1/customers/{a['id']}", headers=hub.auth("supervisor"))
    assert_error(erase, 403, "forbidden")
    still = await hub.api.get(f"/api/v1/customers/{a['id']}")
    assert still.status_code == 200
    assert sorted(still.json()["phones"]) == ["+14155550100", "+14155550101"]


async def test_roles_above_are_allowed(hub: Hub) -> None:
    a = await hub.create_customer(name="Ann")
    for role in ("supervisor", "admin"):
        export = await hub.api.get(f"/api/v1/customers/{a['id']}/export", headers=hub.auth(role))
        assert export.status_code == 200, (role, export.text)


async def test_malformed_json_is_400_with_a_message(hub: Hub) -> None:
    response = await hub.api.post(
        "/api/v1/customers",
        content=b'{"name": "Ann",',
        headers={"Content-Type": "application/json"},
    )
    error = assert_error(response, 400, "malformed_json")
    assert "JSON" in error["message"]


async def test_empty_body_is_400(hub: Hub) -> None:
    response = await hub.api.post("/api/v1/customers", content=b"")
    assert_error(response, 400)


async def test_body_not_an_object_is_422(hub: Hub) -> None:
    response = await hub.api.post("/api/v1/customers", json=["Ann"])
    assert_error(response, 422, "invalid_field")


async def test_unknown_body_field_is_422_naming_it(hub: Hub) -> None:
    response = await hub.api.post("/api/v1/customers", json={"name": "Ann", "nmae": "typo"})
    error = assert_error(response, 422, "invalid_field")
    assert error["field"] == "nmae"
    a = await hub.create_customer(name="Ann")
    response = await hub.api.patch(f"/api/v1/customers/{a['id']}", json={"phones": ["1"]})
    error = assert_error(response, 422, "invalid_field")
    assert error["field"] == "phones"


async def test_wrong_type_is_422_naming_the_field(hub: Hub) -> None:
    response = await hub.api.post("/api/v1/customers", json={"phones": "+14155550100"})
    error = assert_error(response, 422, "invalid_field")
    assert error["field"] == "phones"
    response = await hub.api.post("/api/v1/customers", json={"handles": [{"network": "myspace"}]})
    error = assert_error(response, 422, "invalid_field")
    assert error["field"].startswith("handles.0")


async def test_unknown_ids_are_404(hub: Hub) -> None:
    for method, path, body in [
        ("GET", f"/api/v1/customers/{MISSING}", None),
        ("PATCH", f"/api/v1/customers/{MISSING}", {"name": "x"}),
        ("GET", f"/api/v1/customers/{MISSING}/timeline", None),
        ("POST", f"/api/v1/customers/{MISSING}/notes", {"text": "x"}),
        ("GET", f"/api/v1/customers/{MISSING}/documents", None),
        ("GET", f"/api/v1/customers/{MISSING}/merges", None),
        ("GET", f"/api/v1/documents/{MISSING}", None),
    ]:
        response = await hub.api.request(method, path, json=body)
        assert_error(response, 404, "not_found")


async def test_unknown_ids_for_privileged_operations_are_404(hub: Hub) -> None:
    export = await hub.api.get(
        f"/api/v1/customers/{MISSING}/export", headers=hub.auth("supervisor")
    )
    assert_error(export, 404, "not_found")
    erase = await hub.api.delete(f"/api/v1/customers/{MISSING}", headers=hub.auth("admin"))
    assert_error(erase, 404, "not_found")
    undo = await hub.api.post(f"/api/v1/merges/{MISSING}/undo", headers=hub.auth("supervisor"))
    assert_error(undo, 404, "not_found")
    a = await hub.create_customer(name="Ann")
    merge = await hub.api.post(f"/api/v1/customers/{a['id']}/merge", json={"other_id": MISSING})
    assert_error(merge, 404, "not_found")
    upload = await hub.api.post(
        f"/api/v1/customers/{MISSING}/documents", files={"file": ("a.txt", b"hi", "text/plain")}
    )
    assert_error(upload, 404, "not_found")


async def test_unknown_route_is_404_json(hub: Hub) -> None:
    response = await hub.api.get("/api/v1/no-such-thing")
    assert_error(response, 404, "not_found")
    response = await hub.anon.get("/nowhere")
    assert_error(response, 404, "not_found")


async def test_wrong_method_is_405_json(hub: Hub) -> None:
    response = await hub.api.put("/api/v1/customers", json={})
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"]
    response = await hub.anon.post("/healthz")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


async def test_405_allow_lists_every_method_of_the_path(hub: Hub) -> None:
    missing = []
    for path, methods in [
        ("/api/v1/customers", {"GET", "POST"}),
        (f"/api/v1/customers/{MISSING}", {"GET", "PATCH", "DELETE"}),
        (f"/api/v1/customers/{MISSING}/documents", {"GET", "POST"}),
    ]:
        response = await hub.api.put(path, json={})
        assert_error(response, 405, "method_not_allowed")
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        if not methods <= allowed:
            missing.append((path, sorted(methods - allowed)))
    assert not missing, f"Allow lacks: {missing}"


async def test_bad_limit_is_422_naming_it(hub: Hub) -> None:
    response = await hub.api.get("/api/v1/customers", params={"limit": "many"})
    error = assert_error(response, 422, "invalid_field")
    assert error["field"] == "limit"
    response = await hub.api.get("/api/v1/customers", params={"limit": "0"})
    assert_error(response, 422, "invalid_field")


async def test_bad_customer_cursor_is_400(hub: Hub) -> None:
    response = await hub.api.get("/api/v1/customers", params={"cursor": "!!not-ours!!"})
    assert_error(response, 400, "bad_cursor")


async def test_bad_timeline_cursor_is_400(hub: Hub) -> None:
    a = await hub.create_customer(name="Ann")
    response = await hub.api.get(
        f"/api/v1/customers/{a['id']}/timeline", params={"cursor": "not-a-cursor"}
    )
    assert_error(response, 400, "bad_cursor")


async def test_bad_idempotency_key_is_400(hub: Hub) -> None:
    response = await hub.api.post(
        "/api/v1/customers", json={"name": "Ann"}, headers={"Idempotency-Key": "k" * 256}
    )
    assert_error(response, 400, "bad_idempotency_key")
    response = await hub.api.post(
        "/api/v1/customers", json={"name": "Ann"}, headers={"Idempotency-Key": ""}
    )
    assert_error(response, 400, "bad_idempotency_key")
