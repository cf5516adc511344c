"""FastAPI routes of the Optimizely integration, mounted by the HTTP server.

- `GET /bucketer?e=KEY&u=USER&a=tier:"platinum",member_since_days:56&debug=1`
  → `{"variation", "user", "experiment"}` (+ `"debug"`). `u` defaults to the
  client's IP (`request.client.host`: behind a proxy, run the server with
  trusted proxy headers so that this is the real client). A bad `a` pair → 400
  naming it; missing `e` → 400; unknown experiment → 404; no datafile → 503.
  Errors are `{"error": code, "reason": text}`.
- `GET /decide?flag=KEY&u=USER&a=...&debug=1` → the SDK's decide for a flag.
- `POST /webhooks/optimizely` → checks `X-Hub-Signature` (HMAC-SHA1 of the
  raw body) and triggers an immediate datafile refetch (202). Without a
  configured secret the route answers 404 (disabled); missing signature →
  401, wrong signature → 403.

The bucketer routes take `auth_dependency` (the collector's auth) unless
`public=True`; the webhook is authenticated by its signature only.

Usage::

    router = build_optimizely_router(bucketer, manager, require_token, webhook_secret, public=False)
    app.include_router(router)
"""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any, Callable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from optimizely_integration import metrics
from optimizely_integration.attributes import AttributeParseError, parse_attributes
from optimizely_integration.bucketer import Bucketer, BucketerError
from optimizely_integration.datafile import DatafileManager
from optimizely_integration.webhook_signature import verify_webhook

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature"


def _error(status: int, code: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": code, "reason": reason}, status_code=status)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def _user(request: Request, given: str | None) -> str | None:
    if given:
        return given
    return request.client.host if request.client else None


def _takes_request_only(auth: Callable[..., Any] | None) -> bool:
    """True for an async callable of one parameter, the request."""
    if auth is None:
        return False
    method = inspect.getattr_static(type(auth), "__call__", None)
    if not (inspect.iscoroutinefunction(auth) or inspect.iscoroutinefunction(method)):
        return False
    try:
        parameters = list(inspect.signature(auth).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(parameters) == 1 and parameters[0].annotation in (Request, "Request")


def _query_parameters(key: str, what: str) -> dict[str, Any]:
    def parameter(name: str, description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": description}

    return {
        "parameters": [
            parameter(key, f"{what} (required: 400 without it)"),
            parameter("u", "the user id; default: the client's address"),
            parameter("a", 'attributes, `key:value` pairs, the value JSON: `tier:"platinum",member_since_days:56`'),
            parameter("debug", "`1` adds the datafile, time and attributes used"),
        ]
    }


def build_optimizely_router(
    bucketer: Bucketer,
    datafile_manager: DatafileManager,
    auth_dependency: Callable[..., Any] | None,
    webhook_secret: str | None,
    public: bool = False,
) -> APIRouter:
    router = APIRouter()
    if not public and auth_dependency is None:
        raise ValueError("the bucketer needs an auth dependency unless it is public")
    guarded = [] if public or auth_dependency is None else [Depends(auth_dependency)]
    # An auth that takes the request alone (the server's Basic auth) is called
    # by the routes themselves: solving it as a FastAPI dependency cost a
    # quarter of a decision. The document still names its security scheme.
    direct_auth = None if public or not _takes_request_only(auth_dependency) else auth_dependency
    secured: dict[str, Any] = {}
    if direct_auth is not None:
        guarded = []
        scheme = getattr(direct_auth, "scheme_name", None)
        secured = {"security": [{scheme: []}]} if scheme else {}

    async def authenticate(request: Request) -> None:
        if direct_auth is not None:
            await direct_auth(request)

    def answer(ask, key: str | None, request: Request, u: str | None, a: str | None, debug: str | None) -> JSONResponse:
        """Parse the attributes, ask the bucketer, map its errors to 4xx."""
        try:
            result = ask(key, _user(request, u), parse_attributes(a))
        except AttributeParseError as exc:
            return _error(400, "bad_attribute", str(exc))
        except BucketerError as exc:
            return _error(exc.status, exc.code, exc.reason)
        return JSONResponse(result.to_response(_truthy(debug)))

    # async: a decision is CPU only (the impression goes to the dispatcher's
    # in-memory buffer), so it runs on the event loop, without a worker thread.
    # The query is read directly: FastAPI's per-parameter machinery cost more
    # than the SDK's decision. The parameters are declared for the document.
    @router.get("/bucketer", dependencies=guarded, openapi_extra={**_query_parameters("e", "the experiment key"), **secured})
    async def bucketer_route(request: Request) -> JSONResponse:
        await authenticate(request)
        query = request.query_params
        return answer(bucketer.variation, query.get("e"), request, query.get("u"), query.get("a"), query.get("debug"))

    @router.get("/decide", dependencies=guarded, openapi_extra={**_query_parameters("flag", "the feature flag key"), **secured})
    async def decide_route(request: Request) -> JSONResponse:
        await authenticate(request)
        query = request.query_params
        return answer(bucketer.decide, query.get("flag"), request, query.get("u"), query.get("a"), query.get("debug"))

    @router.post("/webhooks/optimizely")
    async def webhook_route(request: Request) -> JSONResponse:
        if not webhook_secret:
            metrics.WEBHOOKS.labels("disabled").inc()
            return _error(404, "webhook_disabled", "no webhook secret is configured")
        body = await request.body()
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            metrics.WEBHOOKS.labels("unsigned").inc()
            return _error(401, "missing_signature", f"the {SIGNATURE_HEADER} header is required")
        if not verify_webhook(body, signature, webhook_secret):
            metrics.WEBHOOKS.labels("bad_signature").inc()
            log.warning("optimizely webhook with a bad signature from %s", request.client.host if request.client else "?")
            return _error(403, "bad_signature", "the signature does not match")
        metrics.WEBHOOKS.labels("accepted").inc()
        try:
            announced = json.loads(body).get("data", {}).get("revision")
        except (ValueError, AttributeError):
            announced = None
        log.info("optimizely webhook: refetching the datafile (announced revision %s)", announced)
        datafile_manager.request_refresh()
        return JSONResponse({"status": "refresh scheduled", "revision": datafile_manager.revision}, status_code=202)

    return router
