"""Operations routes: /healthz (liveness), /readyz (readiness), /metrics.

Readiness is a callable returning `{component: status}` where a status is a
bool, `(ok, detail)` or `{"ok": bool, "detail": str}`; /readyz answers 200
when every component is ok, else 503, and always lists them all.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)

Readiness = Callable[[], Mapping[str, Any]]
STARTED = time.monotonic()


def normalise(status: Any) -> dict[str, Any]:
    """Any accepted status form as `{"ok": bool, "detail": str}`."""
    if isinstance(status, bool):
        return {"ok": status, "detail": ""}
    if isinstance(status, tuple) and len(status) == 2:
        return {"ok": bool(status[0]), "detail": str(status[1])}
    if isinstance(status, Mapping):
        return {"ok": bool(status.get("ok")), "detail": str(status.get("detail", ""))}
    return {"ok": False, "detail": f"unreadable status {status!r}"[:200]}


def evaluate(readiness: Readiness) -> tuple[bool, dict[str, dict[str, Any]]]:
    try:
        components = {str(name): normalise(status) for name, status in readiness().items()}
    except Exception as exc:  # a failing check means not ready, never a 500
        log.warning("http: readiness check failed: %s", exc, exc_info=True)
        components = {"readiness": {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}}
    return all(c["ok"] for c in components.values()), components


def build_router(readiness: Readiness) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok", "uptime_seconds": round(time.monotonic() - STARTED, 3)}

    @router.get("/readyz", responses={503: {"description": "some component is not ready"}})
    async def readyz() -> JSONResponse:
        """Readiness of what this process runs: 200 when every component is ok."""
        ready, components = await run_in_threadpool(evaluate, readiness)
        return JSONResponse({"ready": ready, "components": components}, status_code=200 if ready else 503)

    @router.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format, every metric of this process."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router
