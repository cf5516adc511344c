"""The OpenAPI document, made to tell the truth about the server.

FastAPI derives most of it from the routes. This module adds what it cannot
know, once, when the document is first asked for:

- every route behind Basic auth (declared by FastAPI, `service.auth.BasicAuth`
  being a security scheme) lists the 401 (with `WWW-Authenticate`) and 429
  (with `Retry-After`) the auth dependency answers;
- every error has the `{"error", "detail"}` shape of `service.errors`:
  FastAPI's default 422 schema (`HTTPValidationError`) is replaced;
- the answers routes give by raising (400, 403, 503) are listed where they
  can happen,.

`tests/test_http_schema.py` runs schemathesis against the served document
(authenticated, about 50 examples per route): no 5xx, and every answer, its
status, content type, headers and body, as the document says.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.collector import PROPERTY_MARKER

ERROR_SCHEMA: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
_ERROR_COMPONENT: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "one line"},
        "detail": {
            "type": "array",
            "description": "field-level reasons (validation errors only)",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
_NO_NUL = {"type": "string", "pattern": "^[^\\x00]*$"}
# A property of a generic event: any JSON value, but no NUL in its strings or
# names (no sink can store one).
_PROPERTY_COMPONENT: dict[str, Any] = {
    "description": "any JSON value kept as a property of the event; no NUL in its strings or field names",
    "anyOf": [
        _NO_NUL,
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": {"$ref": "#/components/schemas/Property"}},
        {"type": "object", "propertyNames": _NO_NUL, "additionalProperties": {"$ref": "#/components/schemas/Property"}},
    ],
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
_CHALLENGE = {"WWW-Authenticate": {"description": "the Basic challenge", "schema": {"type": "string"}}}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    if headers:
        response["headers"] = headers
    return response


# Answers by route template that FastAPI cannot see (they are raised).
_RAISED: dict[str, dict[int, str]] = {
    "/web/page_view/count": {503: "the count rollup is not configured"},
    "/button/click/count": {503: "the count rollup is not configured"},
    "/events/customers/{customer_id}/buckets": {
        400: "a missing or bad `start`/`end`, `start >= end`, a range over the maximum",
        403: "`restrict_buckets_to_user`: another user's buckets",
        503: "bucket queries are not configured",
    },
    "/events/customers/{customer_id}/buckets.svg": {
        400: "a missing or bad `start`/`end`, `start >= end`, a range over the maximum, too many bars",
        403: "`restrict_buckets_to_user`: another user's buckets",
        503: "bucket queries are not configured",
    },
}


def document_errors(app: FastAPI) -> None:
    """Install an `openapi()` that post-processes FastAPI's document once."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _amend(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _amend(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = _ERROR_COMPONENT
    schemas["Property"] = _PROPERTY_COMPONENT
    # The collector routes call the auth themselves and declare it in openapi_extra.
    components.setdefault("securitySchemes", {}).setdefault(
        "basic", {"type": "http", "scheme": "basic", "description": "a user of the credentials file (`users add NAME`)"})
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = _error(responses["422"].get("description") or "field-level reasons")
            for status, text in _RAISED.get(path, {}).items():
                responses.setdefault(str(status), _error(text))
            if operation.get("security"):  # service.auth.BasicAuth is a FastAPI security scheme
                responses["401"] = _error("missing or bad Basic credentials", _CHALLENGE)
                responses["429"] = _error("too many failed logins from this client address", _RETRY_AFTER)
            for status in ("503",):
                if status in responses and "content" not in responses[status]:
                    responses[status] = _error(responses[status].get("description", "unavailable"), _RETRY_AFTER)
                elif status in responses and path.startswith(("/events", "/web/page_view", "/button/click")) and method == "post":
                    responses[status].setdefault("headers", _RETRY_AFTER)
            for status in ("400", "403", "413"):
                if status in responses and "content" not in responses[status]:
                    responses[status] = _error(responses[status].get("description", ""))
    _replace(schema["paths"], PROPERTY_MARKER, {"$ref": "#/components/schemas/Property"})
    # FastAPI's own validation schemas are no longer referenced.
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return schema


def _replace(node: Any, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Replace every dict equal to `old` inside `node` by a copy of `new`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if value == old:
                node[key] = dict(new)
            else:
                _replace(value, old, new)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if value == old:
                node[i] = dict(new)
            else:
                _replace(value, old, new)
