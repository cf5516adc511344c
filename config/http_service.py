"""The HTTP service, assembled: the app over the configured collector
transport, the root's count store, the credentials file and, when
`[optimizely]` names a datafile, the Optimizely routes.

`Components.http_service` (config/root.py) calls `build_service`; the `serve`
command and `consume`/`run` with `[http] enabled` (daemon/http_commands.py)
only run what it returns.

Usage::

    app, close = root.http_service(root.http_settings(), register_reload=on_reload)
    serve_forever(app, host, port)
    close()                              # the collector's transport writer
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
from typing import Any, Callable, Mapping

from config.http_settings import service_settings
from config.settings import ConfigError, Settings
from consumers.ports import CountStore
from producers.transport import TransportWriter
from service.settings import HttpSettings

log = logging.getLogger(__name__)

OPTIMIZELY_ROUTES = "config.optimizely_routes"

# `register_reload(name, callback)`: the daemon's SIGHUP registry (daemon.reload.on_reload).
RegisterReload = Callable[[str, Callable[[], None]], None]
# `open_writer(uri, create_resources=False)`: the composition root's `Components.writer`.
OpenWriter = Callable[..., TransportWriter]


def build_service(
    settings: Settings,
    http: HttpSettings,
    open_writer: OpenWriter,
    count_store: CountStore,
    create_resources: bool = False,
    readiness: Callable[[], Mapping[str, Any]] | None = None,
    register_reload: RegisterReload | None = None,
) -> tuple[Any, Callable[[], None]]:
    """(app, close): the app over `http.transport` (opened with `open_writer`)
    and `count_store`; `close` releases the transport writer. `register_reload`
    is given the credentials' reload (and the Optimizely datafile's)."""
    from service.app import build_app
    from service.auth import CredentialStore

    writer, writer_error = _open_writer(open_writer, http.transport, create_resources)
    router, optimizely_ready = optimizely_parts(settings, http.bucketer_public, open_writer=open_writer,
                                                register_reload=register_reload)

    def combined() -> dict[str, Any]:
        components: dict[str, Any] = {}
        for check in (optimizely_ready, readiness):
            if check is not None:
                components.update(check())
        return components

    credentials = CredentialStore(http.credentials_file)
    if register_reload is not None:
        register_reload("credentials", lambda: credentials._reload(force=True))  # SIGHUP
    app = build_app(
        service_settings(settings, http),
        writer,
        count_store,
        credentials,
        router,
        readiness=combined,
        writer_error=writer_error,
    )
    if settings.logging.access_log:
        from observability.access_log import AccessLog

        app.add_middleware(AccessLog)  # outermost: sees every request, auth failures included

    def close() -> None:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()

    return app, close


def _open_writer(open_writer: OpenWriter, uri: str, create_resources: bool) -> tuple[TransportWriter | None, str]:
    """The collector's transport writer, or (None, why): a transport that is down
    at start makes the collector answer 503 and /readyz fail, while queries
    keep working. A malformed URI is a configuration error and stops here."""
    try:
        return open_writer(uri, create_resources=create_resources), ""
    except ValueError as exc:
        raise ConfigError(f"config key http.transport: {exc}") from None
    except Exception as exc:
        log.warning("http: cannot open the collector transport %s: %s", uri, exc)
        return None, f"cannot open {uri}: {type(exc).__name__}: {exc}"[:300]


def optimizely_parts(
    settings: Settings,
    bucketer_public: bool = False,
    open_writer: Callable[[str], Any] | None = None,
    register_reload: RegisterReload | None = None,
) -> tuple[Any, Callable[[], Mapping[str, Any]] | None]:
    """(router factory, readiness) of the Optimizely bucketer and datafile webhook.

    Mounted only when `[optimizely]` names a datafile or an SDK key (or
    `OPTIMIZELY_DATAFILE` is set) and the Optimizely integration is installed.
    `config.optimizely_routes.build_router(settings, auth_dependency=...,
    register_reload=..., open_writer=...)` guards the bucketer routes with our
    Basic auth, leaves the webhook to its signature, registers the datafile's
    refetch with `register_reload` (SIGHUP) and opens the impressions'
    transport with `open_writer` (the composition root's `Components.writer`);
    `readiness()` reports the datafile. The factory is called by
    `build_app`, which turns a failure (no datafile, say) into a failed
    `optimizely` component on /readyz instead of stopping the server.
    """
    if not _optimizely_configured(settings):
        return None, None
    try:
        module = importlib.import_module(OPTIMIZELY_ROUTES)
    except ModuleNotFoundError as exc:
        if exc.name in ("optimizely_integration", OPTIMIZELY_ROUTES):
            log.info("http: %s is not installed; the bucketer routes are not mounted", OPTIMIZELY_ROUTES)
            return None, None
        return None, _failed(f"cannot import {OPTIMIZELY_ROUTES}: {exc}")
    except Exception as exc:
        return None, _failed(f"cannot import {OPTIMIZELY_ROUTES}: {type(exc).__name__}: {exc}")
    build = getattr(module, "build_router", None)
    router = getattr(module, "router", None)
    if not callable(build) and router is None:
        return None, _failed(f"{OPTIMIZELY_ROUTES} provides neither build_router(settings) nor router")
    check = getattr(module, "readiness", None)
    ready = _module_readiness(check) if callable(check) else None
    if not callable(build):
        return router, ready  # a ready-made router: build_app guards all of it
    parameters = inspect.signature(build).parameters
    takes_auth = "auth_dependency" in parameters
    hooks = {name: hook for name, hook in (("register_reload", register_reload), ("open_writer", open_writer))
             if name in parameters}

    def factory(auth: Any) -> Any:
        if takes_auth:
            return build(settings, auth_dependency=None if bucketer_public else auth, **hooks)
        from fastapi import APIRouter, Depends

        # A router that knows nothing of our auth: guard all of it.
        guarded = APIRouter(dependencies=[] if bucketer_public else [Depends(auth)])
        guarded.include_router(build(settings, **hooks))
        return guarded

    return factory, ready


def _optimizely_configured(settings: Settings) -> bool:
    table = settings.section("optimizely")
    if not isinstance(table, Mapping):
        return False
    return bool(table.get("datafile") or table.get("sdk_key") or os.environ.get("OPTIMIZELY_DATAFILE"))


def _failed(detail: str) -> Callable[[], Mapping[str, Any]]:
    return lambda: {"optimizely": (False, detail[:300])}


def _module_readiness(check: Callable[[], Any]) -> Callable[[], Mapping[str, Any]]:
    def ready() -> Mapping[str, Any]:
        result = check()
        # Either one status ({"ok", "detail"}, (ok, detail), bool) or {component: status}.
        if isinstance(result, Mapping) and "ok" not in result:
            return result
        return {"optimizely": result}

    return ready
