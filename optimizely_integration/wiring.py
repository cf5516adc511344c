"""Builders that assemble the integration from settings, for the daemon's
entry points (CLI commands, the HTTP server, the pipeline's sink list).

Usage::

    opt = optimizely_settings(settings)
    parts = build_bucketer(settings)                  # BucketerParts
    router = build_optimizely_router(parts.bucketer, parts.datafile_manager, auth, opt.webhook_secret(), opt.bucketer_public)
    ...
    parts.close()

    sink = build_conversion_sink(settings, dead_letters)   # None unless [optimizely.conversions] maps something
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from config.optimizely_settings import optimizely_settings
from consumers.ports import DeadLetterSink
from optimizely_integration.bucketer import Bucketer
from optimizely_integration.bulk_event_dispatcher import BulkEventDispatcher
from optimizely_integration.bulk_sink import OptimizelyBulkSink
from optimizely_integration.conversions import ConversionBuilder
from optimizely_integration.datafile import DatafileManager, DatafileSource, source_from_settings
from optimizely_integration.settings import OptimizelySettings


def open_dispatcher(settings: Any, opt: OptimizelySettings | None = None, create_resources: bool = False) -> BulkEventDispatcher:
    """A `BulkEventDispatcher` onto `optimizely.dispatch_to`."""
    from producers.transports import open_writer

    opt = opt or optimizely_settings(settings)
    writer = open_writer(opt.dispatch_uri(settings), settings=settings, create_resources=create_resources)
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
    settings: Any,
    activate: bool | None = None,
    source: DatafileSource | None = None,
    start_refresh: bool = True,
) -> BucketerParts:
    """Load the datafile (raises `DatafileError` if it cannot) and build a
    bucketer; with activation, impressions go out through a dispatcher."""
    opt = optimizely_settings(settings)
    activate = opt.bucketer_activate if activate is None else activate
    dispatcher = open_dispatcher(settings, opt) if activate else None
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


def build_conversion_sink(
    settings: Any, dead_letters: DeadLetterSink, datafile_manager: DatafileManager | None = None
) -> OptimizelyBulkSink | None:
    """The bulk sink for stream conversions, or None when none are mapped.
    Without a `datafile_manager` one is loaded (and refreshed) from settings."""
    opt = optimizely_settings(settings)
    if not opt.conversions:
        return None
    if datafile_manager is None:
        datafile_manager = DatafileManager(
            source_from_settings(opt), refresh_interval=opt.datafile_refresh_interval, fetch_timeout=opt.datafile_fetch_timeout
        )
        datafile_manager.load()
        datafile_manager.start()
    config = datafile_manager.project_config()
    missing = sorted(key for key in opt.conversions.values() if key not in config.event_key_map)
    if missing:
        from config.settings import ConfigError

        raise ConfigError(f"config key optimizely.conversions: event keys not in the datafile: {', '.join(missing)}")
    builder = ConversionBuilder(opt.conversions, datafile_manager.project_config, opt.conversion_tag_properties)
    return OptimizelyBulkSink.from_settings(opt, dead_letters, conversions=builder)
