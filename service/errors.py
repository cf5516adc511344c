"""One error shape for every route: `{"error": "one line", "detail": [...]}`.

`detail` appears on validation errors only, as field-level reasons in the
shape of seed 004's 400 response: `{"loc": ["body", 0, "url"], "msg": ...,
"type": ...}`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

VALIDATION_ERROR = "Validation Error"
MAX_REASONS = 100  # a 10 000-event batch of garbage must not get a 10 MB answer


class ApiError(Exception):
    """Raised by a route or dependency; becomes a JSON error response."""

    def __init__(
        self,
        status: int,
        message: str,
        detail: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = list(detail) if detail is not None else None
        self.headers = dict(headers or {})


def reason(loc: Sequence[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    """One field-level reason."""
    return {"loc": list(loc), "msg": msg, "type": kind}


def validation_error(status: int, reasons: Sequence[Mapping[str, Any]]) -> ApiError:
    return ApiError(status, VALIDATION_ERROR, reasons[:MAX_REASONS])


def error_response(status: int, message: str, detail: Any = None, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def install_handlers(app: FastAPI) -> None:
    """Route every error, FastAPI's own included, through `error_response`."""

    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.detail, exc.headers)

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    async def on_request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own parameter validation (a missing ?url=, say): same shape as ours.
        reasons = [
            reason([str(p) if not isinstance(p, int) else p for p in e.get("loc", ())], str(e.get("msg", "")), str(e.get("type", "")))
            for e in exc.errors()
        ]
        return error_response(422, VALIDATION_ERROR, reasons[:MAX_REASONS])

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never let a bug take the server down or leak a traceback to a client.
        log.exception("http: unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error")

    app.add_exception_handler(ApiError, on_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_request_validation)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_unexpected)
