"""The bucketer and its parts, assembled from settings for the `bucket`
command and the HTTP routes (config/optimizely_routes.py). The transport the
impressions go to is opened by the caller's `open_writer(uri)` (the
composition root's `Components.writer`), else from the settings by
config/transports.py.

Usage::

    opt = optimizely_settings(settings)
    parts = build_bucketer(settings, root.writer)      # BucketerParts
    router = build_optimizely_router(parts.bucketer, parts.datafile_manager, auth, opt.webhook_secret(), opt.bucketer_public)
    ...
    parts.close()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from config import transports
from config.optimizely_settings import optimizely_settings
from config.settings import Settings
from optimizely_integration.bucketer import Bucketer
from optimizely_integration.bulk_event_dispatcher import BulkEventDispatcher
from optimizely_integration.datafile import DatafileManager, DatafileSource, source_from_settings
from optimizely_integration.settings import OptimizelySettings
from producers.transport import TransportWriter

OpenWriter = Callable[[str], TransportWriter]  # transport URI -> its writer


def open_dispatcher(settings: Settings, open_writer: OpenWriter | None, opt: OptimizelySettings | None = None) -> BulkEventDispatcher:
    """A `BulkEventDispatcher` onto `optimizely.dispatch_to`."""
    opt = opt or optimizely_settings(settings)
    uri = opt.dispatch_uri(settings.data_dir)
    writer = open_writer(uri) if open_writer is not None else transports.open_writer(uri, settings)
    return BulkEventDispatcher(writer, max_buffer=opt.dispatcher_buffer)


@dataclass
class BucketerParts:
    bucketer: Bucketer
    datafile_manager: DatafileManager
    dispatcher: BulkEventDispatcher | None

    def close(self) -> None:
        self.datafile_manager.stop()
        if self.dispatcher is not None:
            self.dispatcher.close()


def build_bucketer(
    settings: Settings,
    open_writer: OpenWriter | None,
    activate: bool | None = None,
    source: DatafileSource | None = None,
    start_refresh: bool = True,
) -> BucketerParts:
    """Load the datafile (raises `DatafileError` if it cannot) and build a
    bucketer; with activation, impressions go out through a dispatcher."""
    opt = optimizely_settings(settings)
    activate = opt.bucketer_activate if activate is None else activate
    dispatcher = open_dispatcher(settings, open_writer, opt) if activate else None
    manager = DatafileManager(
        source or source_from_settings(opt),
        event_dispatcher=dispatcher,
        refresh_interval=opt.datafile_refresh_interval,
        fetch_timeout=opt.datafile_fetch_timeout,
    )
    try:
        manager.load()
    except Exception:
        if dispatcher is not None:
            dispatcher.close()
        raise
    if start_refresh:
        manager.start()
    return BucketerParts(Bucketer(manager, activate=activate), manager, dispatcher)
