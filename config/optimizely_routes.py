"""The Optimizely routes built from settings: the hooks the HTTP server looks
for (`build_router`, `readiness`) when `[optimizely]` names a datafile.

Usage::

    router = build_router(settings, auth_dependency=basic_auth, register_reload=on_reload, open_writer=root.writer)
    app.include_router(router)
    readiness()          # {"ok": True, "detail": "revision 7 from file:..."}
"""

from __future__ import annotations

import atexit
from typing import Any, Callable

from fastapi import APIRouter

from config.optimizely_parts import BucketerParts, OpenWriter, build_bucketer
from config.optimizely_settings import optimizely_settings
from config.settings import Settings
from optimizely_integration.http_routes import build_optimizely_router

_parts: BucketerParts | None = None  # of the router built from settings


def build_router(
    settings: Settings,
    auth_dependency: Callable[..., Any] | None = None,
    register_reload: Callable[[str, Callable[[], None]], None] | None = None,
    open_writer: OpenWriter | None = None,
) -> APIRouter:
    """The router from settings: loads the datafile (raises if it cannot),
    starts its refresh, and opens the impression dispatcher (closed at exit).

    Without `auth_dependency` the routes carry no guard of their own: the
    server that mounts them is expected to guard the bucketer routes.
    `register_reload(name, callback)` (the daemon's SIGHUP registry) is given
    the datafile's immediate refetch; `open_writer(uri)` (the composition
    root's `Components.writer`) opens the impressions' transport."""
    global _parts
    opt = optimizely_settings(settings)
    parts = build_bucketer(settings, open_writer)
    atexit.register(parts.close)  # flush buffered impressions to the transport
    _parts = parts
    if register_reload is not None:
        register_reload("datafile", parts.datafile_manager.refresh_now)  # SIGHUP refetches at once
    public = opt.bucketer_public or auth_dependency is None
    return build_optimizely_router(parts.bucketer, parts.datafile_manager, auth_dependency, opt.webhook_secret(), public)


def readiness() -> dict[str, Any]:
    """The datafile's status for /readyz."""
    if _parts is None:
        return {"ok": False, "detail": "not built"}
    manager = _parts.datafile_manager
    if manager.revision is None:
        return {"ok": False, "detail": f"no datafile: {manager.last_error}"}
    detail = f"revision {manager.revision} from {manager.source.url}"
    if manager.last_error:
        detail += f"; last refresh failed: {manager.last_error}"
    return {"ok": True, "detail": detail[:300]}
