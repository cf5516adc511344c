"""Reading counts: seed 003's per-user totals and seed 004's hourly buckets.

- GET /web/page_view/count?url= and GET /button/click/count?button_id=: the
  authenticated user's all-time count, the sum over every window of the
  rollups keyed by (customer_id, url) and (customer_id, button_id).
- GET /events/customers/{customer_id}/buckets?start=ISO&end=ISO: the JSON of
  `query buckets` (consumers.bucket_query, so the rules are shared). Seed
  004's form, a GET with a JSON body `{customer_id, start, end}`, works too.
- GET /events/customers/{customer_id}/buckets.svg: the same as a bar chart.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from consumers.bucket_chart import render_svg
from consumers.bucket_query import query_buckets
from service.bodies import parse_json, read_capped
from service.collector import ISO_PATTERN
from service.context import ServiceContext
from service.errors import ApiError, reason, validation_error
from service.settings import UnknownRollup
from streams.events import ParseError
from streams.timestamps import parse_timestamp_us

MAX_QUERY_BODY_BYTES = 64 * 1024
BUCKETS_EXAMPLE = {
    "customer_id": "b4f9279a0196e40632e947dd1a88e857",
    "buckets": [{"ts_start_of_hour": "2021-03-01T00:00:00.000000Z", "count": 2499}],
}


def build_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["counts"])
    user = Depends(ctx.auth)

    @router.get("/web/page_view/count", responses={200: {"content": {"application/json": {"example": {"count": 5}}}}})
    async def page_view_count(url: str = Query(..., min_length=1, max_length=4096), username: str = user) -> dict[str, int]:
        """All-time page views of `url` by the authenticated user."""
        return {"count": await _total(ctx, ctx.http.page_view_rollup, (username, url))}

    @router.get("/button/click/count", responses={200: {"content": {"application/json": {"example": {"count": 5}}}}})
    async def button_click_count(
        button_id: str = Query(..., min_length=1, max_length=256), username: str = user
    ) -> dict[str, int]:
        """All-time clicks of `button_id` by the authenticated user."""
        return {"count": await _total(ctx, ctx.http.button_click_rollup, (username, button_id))}

    range_params = {
        "parameters": [
            {"name": "start", "in": "query", "required": True, "schema": {"type": "string", "pattern": ISO_PATTERN},
             "description": "ISO 8601 with offset, before `end` (or in a JSON body `{customer_id, start, end}`, seed 004's form)"},
            {"name": "end", "in": "query", "required": True, "schema": {"type": "string", "pattern": ISO_PATTERN},
             "description": "ISO 8601 with offset, after `start` by at most `[http] query_max_range` (or in the JSON body)"},
        ]
    }

    @router.get(
        "/events/customers/{customer_id}/buckets",
        openapi_extra=range_params,
        responses={200: {"content": {"application/json": {"example": BUCKETS_EXAMPLE}}}, 400: {"description": "bad range"}},
    )
    async def buckets(customer_id: str, request: Request, username: str = user) -> JSONResponse:
        """Hourly counts of one customer in [start floored to the hour, end).

        `start`/`end` come from the query string or from a JSON body
        `{"customer_id", "start", "end"}` (seed 004's form)."""
        result = await _buckets(ctx, customer_id, request, username)
        return JSONResponse(result)

    @router.get(
        "/events/customers/{customer_id}/buckets.svg",
        openapi_extra=range_params,
        response_class=Response,
        responses={200: {"content": {"image/svg+xml": {}}}, 400: {"description": "bad range or too many buckets"}},
    )
    async def buckets_svg(customer_id: str, request: Request, username: str = user) -> Response:
        """The same buckets as an SVG bar chart."""
        result = await _buckets(ctx, customer_id, request, username)
        if len(result["buckets"]) > ctx.http.max_chart_buckets:
            raise ApiError(
                400, f"{len(result['buckets'])} buckets are too many to draw (limit {ctx.http.max_chart_buckets}); narrow the range"
            )
        return Response(render_svg(result), media_type="image/svg+xml")

    return router


async def _total(ctx: ServiceContext, rollup: str, key: tuple[str, ...]) -> int:
    try:
        ctx.queries.rollup(rollup)
    except UnknownRollup as exc:
        raise ApiError(503, f"counts are not configured: {exc}") from None
    return await run_in_threadpool(ctx.store.total, rollup, key)


async def _buckets(ctx: ServiceContext, customer_id: str, request: Request, username: str) -> dict[str, Any]:
    rules = ctx.queries
    if ctx.http.restrict_buckets_to_user and customer_id != username:
        raise ApiError(403, "you may only query your own buckets")
    where, values = await _range_values(request, customer_id)
    reasons = [reason([where, name], "Field required", "missing") for name in ("start", "end") if values.get(name) is None]
    reasons += [
        reason([where, name], "expected an ISO 8601 string", "string_type")
        for name in ("start", "end")
        if values.get(name) is not None and not isinstance(values[name], str)
    ]
    if reasons:
        raise validation_error(400, reasons)
    bounds: dict[str, int] = {}
    for name in ("start", "end"):
        try:
            bounds[name] = parse_timestamp_us(values[name], rules.naive_timezone)
        except ParseError as exc:
            raise ApiError(400, f"bad timestamp: {name}: {exc}", [reason([where, name], str(exc), "bad_timestamp")]) from None
    try:
        return await run_in_threadpool(query_buckets, ctx.store, rules.rollup(rules.query_rollup),
                                     rules.max_range, customer_id, bounds["start"], bounds["end"])
    except UnknownRollup as exc:
        raise ApiError(503, f"bucket queries are not configured: {exc}") from None
    except ValueError as exc:  # start >= end, range over the maximum
        raise ApiError(400, str(exc)) from None


async def _range_values(request: Request, customer_id: str) -> tuple[str, dict[str, Any]]:
    """("query" | "body", {"start": ..., "end": ...}): the query string wins."""
    query = request.query_params
    if "start" in query or "end" in query:
        return "query", {"start": query.get("start"), "end": query.get("end")}
    body = await read_capped(request, MAX_QUERY_BODY_BYTES)
    if not body.strip():
        return "query", {}
    data = parse_json(body)
    if not isinstance(data, dict):
        raise validation_error(400, [reason(["body"], "expected a JSON object {customer_id, start, end}", "model_type")])
    if data.get("customer_id", customer_id) != customer_id:
        raise validation_error(400, [reason(["body", "customer_id"], "differs from the customer id in the path", "mismatch")])
    return "body", {"start": data.get("start"), "end": data.get("end")}
