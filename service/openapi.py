"""The OpenAPI document, made to tell the truth about the server.

FastAPI derives most of it from the routes. This module adds what it cannot
know: every route behind Basic auth says so (`securitySchemes`) and lists the
401 and 429 it may answer; every error has the `{"error", "detail"}` shape of
`service.errors` (FastAPI's default 422 schema is replaced); the answers the
routes give through exceptions (400, 403, 413, 503) are listed with them.
`tests/test_http_schema.py` runs schemathesis against the served document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

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


def document_errors(app: FastAPI) -> None:
    """Install an `openapi()` that post-processes FastAPI's document once."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = _ERROR_COMPONENT
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
