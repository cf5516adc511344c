"""Assemble the FastAPI app from its parts; nothing here opens a resource.

    app = build_app(service_settings, writer, store, CredentialStore(path))

`service_settings` is a `service.settings.ServiceSettings`, parsed by the
composition root (`config.http_settings`). The root (`config.http_service`,
for `serve` and for `consume` with `[http] enabled`) opens the transport
writer and the count store, and says what else runs through `readiness`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from fastapi import APIRouter, Depends, FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from consumers.ports import CountStore
from producers.transport import TransportWriter, wall_clock_us
from service import collector, counts, ops
from service.auth import BasicAuth, CredentialStore, FailureLimiter
from service.context import ServiceContext
from service.docs import mount_docs
from service.errors import install_handlers
from service.collector import Limits, acceptance_floor
from service.group_commit import Committer
from service.idempotency import IdempotencyLedger
from observability.asgi_responses import observe_response
from service.metrics import LATENCY, REQUESTS
from service.openapi import ERROR_SCHEMA, document_errors
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

PROBE_KEY = ("__rivulet_readiness_probe__",)


def build_app(
    settings: ServiceSettings,
    transport_writer: TransportWriter | None,
    count_store: CountStore,
    credentials: CredentialStore | str | os.PathLike[str],
    optimizely_router: APIRouter | Callable[[Any], APIRouter] | None = None,
    readiness: Callable[[], Mapping[str, Any]] | None = None,
    *,
    clock_us: Callable[[], int] = wall_clock_us,
    writer_error: str = "",
) -> FastAPI:
    """The HTTP service.

    `transport_writer` None disables collecting (503, reason `writer_error`).
    `/readyz` checks the transport, the count store and the credentials, plus
    every component `readiness()` returns (sources, sinks, the datafile ...;
    its entries win on a name clash). `optimizely_router` is either an
    `APIRouter`, mounted behind Basic auth unless `[http] bucketer_public`, or
    a factory `f(auth_dependency or None) -> APIRouter` that guards its own
    routes (so a webhook can keep its signature check instead); a factory
    that raises leaves the server up with a failed `optimizely` component.
    """
    http = settings.http
    store = credentials if isinstance(credentials, CredentialStore) else CredentialStore(Path(credentials))
    auth = BasicAuth(store, FailureLimiter(http.auth_failure_limit, http.auth_failure_window.total_seconds()))
    ctx = ServiceContext(http, settings.events, settings.queries, transport_writer, count_store, auth, clock_us, writer_error)
    ctx.limits = Limits(ctx)
    if transport_writer is not None:
        # Concurrent requests share one fsync'd spool transaction (group
        # commit); resent event_ids are found in the idempotency ledger.
        ledger = IdempotencyLedger(
            http.idempotency_file, int(http.idempotency_retention.total_seconds() * 1_000_000), clock_us
        )
        ctx.committer = Committer(transport_writer, ledger, acceptance_floor(ctx))

    app = FastAPI(
        title="Rivulet HTTP",
        description="Event collector, per-user counts, hourly bucket queries (JSON and SVG) and operations routes.",
        version="1",
        docs_url=None,  # served from local assets by mount_docs: no CDN
        redoc_url=None,
    )
    mount_docs(app)
    install_handlers(app)
    app.add_middleware(_Metrics)
    lanes: dict[tuple[str, str], Any] = {}  # filled below, read by the middleware at its first request
    app.add_middleware(collector.CollectorLane, ctx=ctx, plain=lanes)  # the collector's POSTs, past the framework
    # The bucketer first: routes are matched in order, and it is the hot GET
    # (the collector's POSTs never reach the router, see CollectorLane).
    failures: dict[str, Any] = {}
    if isinstance(optimizely_router, APIRouter):
        app.include_router(optimizely_router, dependencies=[] if http.bucketer_public else [Depends(auth)])
    elif optimizely_router is not None:
        try:
            built = optimizely_router(None if http.bucketer_public else auth)
            app.include_router(built)
            # Routes that guard themselves and read their own query (the
            # bucketer's) go past the framework too.
            lanes.update(collector.plain_routes(built))
        except Exception as exc:
            log.warning("http: the Optimizely routes are not mounted: %s", exc)
            failures["optimizely"] = (False, f"routes not mounted: {type(exc).__name__}: {exc}"[:300])
    app.include_router(collector.build_router(ctx, ERROR_SCHEMA))
    app.include_router(counts.build_router(ctx))
    app.include_router(ops.build_router(lambda: {**_readiness(ctx, readiness), **failures}))
    app.state.context = ctx
    document_errors(app)
    return app


def _readiness(ctx: ServiceContext, extra: Callable[[], Mapping[str, Any]] | None) -> dict[str, Any]:
    components: dict[str, Any] = {
        "collector_transport": _transport_status(ctx),
        "count_store": _store_status(ctx.store),
        "credentials": ctx.auth.store.status(),
    }
    if ctx.committer is not None and ctx.committer.ledger is not None:
        components["idempotency_ledger"] = ctx.committer.ledger.status()
    if extra is not None:
        components.update(extra())
    return components


def _transport_status(ctx: ServiceContext) -> tuple[bool, str]:
    if ctx.writer is None:
        return False, ctx.writer_error or "no transport configured"
    check = getattr(ctx.writer, "healthy", None)  # optional: a writer may know better
    if callable(check):
        try:
            result = check()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"[:300]
        if isinstance(result, tuple):
            return bool(result[0]), str(result[1])
        return bool(result), ctx.http.transport
    return True, ctx.http.transport


def _store_status(store: CountStore) -> tuple[bool, str]:
    try:
        store.total("__readiness__", PROBE_KEY)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"[:300]
    return True, type(store).__name__


class _Metrics:
    """Count and time every request by its route template (bounded labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        def done(status: int, seconds: float) -> None:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(template, scope.get("method", ""), str(status)).inc()
            LATENCY.labels(template).observe(seconds)

        await observe_response(self.app, scope, receive, send, done)
