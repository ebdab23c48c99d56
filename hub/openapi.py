"""The OpenAPI 3.1 schema, generated from the endpoint declarations (``hub.routing``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from hub.routing import Endpoint

_MEDIA = {
    "binary": ("*/*", {"type": "string", "format": "binary"}),
    "event-stream": ("text/event-stream", {"type": "string"}),
}


def _schema_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(
        ref_template="#/components/schemas/{model}", by_alias=True, mode="serialization"
    )
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _webhook(summary: str) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "summary": summary,
        "tags": ["webhooks"],
        "description": "Called by the provider, authenticated by its signature "
        "(X-Twilio-Signature over HUB_PUBLIC_URL + path + query), not by a bearer token.",
        "security": [],
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "additionalProperties": {"type": "string"}}
                }
            },
        },
        "responses": {
            "200": {
                "description": "stored (TwiML answer, or empty for callbacks)",
                "content": {"text/xml": {"schema": {"type": "string"}}, "text/plain": {}},
            },
            "400": {"description": "a malformed payload", "content": error},
            "403": {"description": "a missing or wrong signature", "content": error},
            "404": {"description": "the channel is off", "content": error},
            "413": {"description": "a body over the webhook limit", "content": error},
        },
    }


def build(
    endpoints: list[Endpoint],
    *,
    version: str,
    server_url: str,
    webhooks: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The OpenAPI document for these endpoints and provider webhooks (path, summary)."""
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {
        path: {
            "post": {
                **_webhook(summary),
                "operationId": "webhook_" + path.strip("/").replace("/", "_"),
            }
        }
        for path, summary in webhooks
    }
    for ep in endpoints:
        op: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": ep.handler.__name__,
            "tags": [ep.tag],
            "responses": {},
        }
        if ep.handler.__doc__:
            op["description"] = ep.handler.__doc__.strip()
        if ep.role is None:
            op["security"] = []
        else:
            op["description"] = op.get("description", "") + f"\n\nNeeds the `{ep.role}` role."
        params = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                "description": p.description,
                "schema": p.schema,
            }
            for p in ep.params
        ]
        if ep.idempotent:
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "replays the first answer for the same key; "
                    "the same key with another request is 422",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                }
            )
            op["responses"]["400"] = {
                "description": "malformed JSON, or an Idempotency-Key that is empty or too long",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
            op["responses"]["422"] = {
                "description": "an invalid field, or an Idempotency-Key reused with "
                "another request",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema_ref(ep.body, components)}},
            }
        if ep.multipart:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    }
                },
            }
        for status, (description, model) in ep.responses.items():
            answer: dict[str, Any] = {"description": description}
            if isinstance(model, str):
                media, schema = _MEDIA[model]
                answer["content"] = {media: {"schema": schema}}
            elif model is not None:
                answer["content"] = {"application/json": {"schema": _schema_ref(model, components)}}
            op["responses"][str(status)] = answer
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "commhub agent API",
            "version": version,
            "description": "Customers, their unified timeline across every channel, and live "
            'updates. Errors are {"error": {"code", "message"}}.',
        },
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
