"""The OpenAPI document describes the whole app, and is itself valid OpenAPI 3.1.

That it describes the answers accurately is checked on every request of the other API
tests (``conftest.checking_hook``); ``test_the_checker_catches_*`` prove the check bites.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from hub.app import create_app
from tests.hub.conftest import (
    UNDOCUMENTED_PATHS,
    Hub,
    OpenApiChecker,
    SchemaViolation,
    fetch_schema,
    hub_settings,
)

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@dataclasses.dataclass(frozen=True)
class Api:
    """An app (not started: serving /openapi.json needs no database) and its schema."""

    app: Starlette
    schema: dict[str, Any]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The schema does not depend on the database: one app for the module's checks."""
    folder: Path = tmp_path_factory.mktemp("openapi")
    app = create_app(
        hub_settings(f"sqlite+aiosqlite:///{folder}/hub.db", folder / "files"),
        run_workers=False,
    )
    yield Api(app, asyncio.run(fetch_schema(app)))


def app_operations(app: Starlette) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route the app serves (HEAD comes with GET)."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Mount) and route.path == "/ui":
            continue  # the agent console: HTML pages, not API operations (docs/console.md)
        assert isinstance(route, Route), f"unexpected route type {route!r}"
        if route.path in UNDOCUMENTED_PATHS:
            continue
        for method in route.methods or ():
            if method != "HEAD":
                found.add((method, route.path))
    return found


def schema_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


def needs_auth(doc: dict[str, Any], operation: dict[str, Any]) -> bool:
    security = operation.get("security", doc.get("security", []))
    return any(requirement for requirement in security)


WEBHOOKS = "/webhooks/"


def test_every_route_is_in_the_schema_and_nothing_else(api: Api) -> None:
    served = app_operations(api.app)
    documented = schema_operations(api.schema)
    missing = {(m, p) for m, p in served - documented if not p.startswith(WEBHOOKS)}
    assert missing == set(), "routes missing from /openapi.json"
    assert documented - served == set(), "operations in /openapi.json the app does not serve"
    assert ("GET", "/api/v1/customers/{id}/timeline") in served


def test_the_webhook_routes_are_in_the_schema(api: Api) -> None:
    served = {(m, p) for m, p in app_operations(api.app) if p.startswith(WEBHOOKS)}
    assert served, "no webhook routes mounted"
    assert served - schema_operations(api.schema) == set()


def test_every_operation_that_needs_a_token_documents_401(api: Api) -> None:
    doc = api.schema
    problems = []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            if needs_auth(doc, operation):
                if "401" not in operation["responses"]:
                    problems.append(f"{method.upper()} {path}: no 401")
            elif path.startswith("/api/"):
                problems.append(f"{method.upper()} {path}: under /api/ but needs no token")
    assert problems == []
    public = {
        (m.upper(), p)
        for p, item in doc["paths"].items()
        for m, op in item.items()
        if m in METHODS and not needs_auth(doc, op)
    }
    webhooks = {(m, p) for m, p in public if p.startswith("/webhooks/")}
    assert public - webhooks == {("GET", "/healthz")}
    for method, path in webhooks:
        # Signed by the provider instead of a token: a bad signature is documented.
        assert "403" in doc["paths"][path][method.lower()]["responses"]


def test_the_security_scheme_is_bearer(api: Api) -> None:
    schemes = api.schema["components"]["securitySchemes"]
    assert api.schema["security"] == [{"bearer": []}]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}


def test_role_restricted_operations_document_403(api: Api) -> None:
    restricted = {
        ("GET", "/api/v1/customers/{id}/export"),
        ("DELETE", "/api/v1/customers/{id}"),
        ("POST", "/api/v1/merges/{id}/undo"),
    }
    for method, path in restricted:
        assert "403" in api.schema["paths"][path][method.lower()]["responses"], (method, path)


def test_operations_with_a_json_body_document_400_and_422(api: Api) -> None:
    for path, item in api.schema["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                assert {"400", "422"} <= set(operation["responses"]), (method, path)


def test_operations_taking_an_idempotency_key_document_its_400(api: Api) -> None:
    missing = []
    for path, item in api.schema["paths"].items():
        for method, operation in item.items():
            names = {p["name"] for p in operation.get("parameters", [])}
            if "Idempotency-Key" in names and "400" not in operation["responses"]:
                missing.append(f"{method.upper()} {path}")
    assert missing == []


async def test_a_bad_idempotency_key_on_erasure_is_documented(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann")
    response = await hub.api.delete(
        f"/api/v1/customers/{ann['id']}",
        headers={"Idempotency-Key": "k" * 300, **hub.auth("admin")},
    )
    assert response.status_code == 400


def test_path_parameters_are_declared(api: Api) -> None:
    for path, item in api.schema["paths"].items():
        names = set(re.findall(r"\{([^}]+)\}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)


def test_operation_ids_are_unique(api: Api) -> None:
    ids = [
        op["operationId"]
        for item in api.schema["paths"].values()
        for m, op in item.items()
        if m in METHODS
    ]
    assert len(ids) == len(set(ids))


def test_the_schema_is_valid_openapi_3_1(api: Api) -> None:
    doc = api.schema
    assert doc["openapi"].startswith("3.1.")
    validate(doc)  # openapi-spec-validator picks the 3.1 validator from the version
    # Every $ref points at something.
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref


def test_the_validator_refuses_a_broken_document(api: Api) -> None:
    broken = {**api.schema, "paths": {"/x": {"get": {"responses": {"200": {}}}}}}
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


# -- the checker itself


def checker() -> OpenApiChecker:
    return OpenApiChecker(
        {
            "openapi": "3.1.0",
            "paths": {
                "/things/{id}": {
                    "get": {
                        "responses": {
                            "200": {
                                "description": "a thing",
                                "content": {
                                    "application/json": {
                                        "schema": {"$ref": "#/components/schemas/Thing"}
                                    }
                                },
                            },
                            "204": {"description": "nothing"},
                        }
                    }
                },
                "/things/special": {"get": {"responses": {"200": {"description": "special"}}}},
            },
            "components": {
                "schemas": {
                    "Thing": {
                        "type": "object",
                        "required": ["id"],
                        "properties": {"id": {"type": "string"}},
                    },
                    "Error": {"type": "object", "required": ["error"]},
                }
            },
        }
    )


def test_the_checker_accepts_a_documented_answer() -> None:
    check = checker()
    check.check("GET", "/things/1", 200, "application/json", b'{"id": "1"}')
    check.check("GET", "/things/1", 204, "", b"")
    check.check("GET", "/things/special", 200, "", b"")  # the literal path wins
    check.check("GET", "/nowhere", 404, "application/json", b'{"error": {}}')
    check.check("POST", "/things/1", 405, "application/json", b'{"error": {}}')


@pytest.mark.parametrize(
    ("method", "path", "status", "media", "body"),
    [
        ("GET", "/things/1", 500, "application/json", b'{"id": "1"}'),  # undocumented status
        ("GET", "/things/1", 200, "application/json", b'{"id": 1}'),  # wrong type
        ("GET", "/things/1", 200, "application/json", b"{}"),  # missing field
        ("GET", "/things/1", 200, "application/json", b"{"),  # not JSON
        ("GET", "/things/1", 200, "text/html", b"<p>"),  # not the documented media
        ("GET", "/things/1", 204, "application/json", b"{}"),  # a body where none is
        ("GET", "/nowhere", 200, "application/json", b"{}"),  # unknown path answered
        ("POST", "/things/1", 200, "application/json", b"{}"),  # unknown method answered
        ("GET", "/nowhere", 404, "application/json", b"{}"),  # 404 not in the error shape
    ],
)
def test_the_checker_catches_a_wrong_answer(
    method: str, path: str, status: int, media: str, body: bytes
) -> None:
    with pytest.raises(SchemaViolation):
        checker().check(method, path, status, media, body)
