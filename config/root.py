"""The composition root: the one place that chooses and builds adapters.

`Components(settings)` builds every part a command needs from the typed
settings and hands each part its dependencies through its constructor. A
command asks the root for a built part (`root.sinks()`, `root.count_store()`)
and only ever sees its port; which backend answers is decided here and
nowhere else. Parts are built on first request and then kept, so a command
that never touches the count store never opens it.

`inject`: the root is what the `inject` injector holds. `config.bindings.configure(settings)`
builds a root, binds it (`Components`) together with `Settings` and the
three store ports (`CountStore`, `ObjectStore`, `DeadLetterSink`, each
answered by the root's own method), and returns it. The CLI entry
(`daemon/cli.py`) calls it once and passes the root to the command it runs;
commands never call `inject` themselves.

Local mode never imports boto3: the aws backend's stores (config/aws_stores.py)
are imported only when `[pipeline] backend = "aws"`, the AWS transports only
when a URI names one (config/transports.py).

The parts, by method:

- stores: `count_store()`, `object_store()`, `dead_letters()`, `counted_keys()`;
- the pipeline: `sinks()` (in write order), `file_source(path)`,
  `random_source(seed, count, rate)`, `reader(uri, group, create_resources)`,
  `writer(uri, create_resources)`;
- Optimizely: `conversion_sink()`, `bucketer(...)`, `optimizely_bulk_sink()`;
- the HTTP service: `http_settings()`, `http_service(http, ...)` (config/http_service.py);
- read-only views for `status`: `spool_status(directory)`,
  `local_store_status()`, `kinesis_leases(stream, group)`.

Usage::

    root = configure(load_settings("config/local.toml"))
    sinks = root.sinks()                 # dead letters, raw events, aggregates, counts (, conversions)
    store = root.count_store()           # SqliteCountStore or DynamoDbCountStore, as CountStore
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from config import transports
from config.aws_resources import create_profile_resources
from config.settings import ConfigError, Settings
from consumers.counted_keys import CountedKeys
from consumers.ports import CountStore, DeadLetterSink, ObjectStore, Sink
from producers.transport import Source, TransportReader, TransportWriter
from service.settings import HttpSettings

T = TypeVar("T")

class Components:
    """Every adapter of one configuration, built on first request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._built: dict[str, Any] = {}
        # The aws backend's stores live in their own module, imported only when
        # chosen; a bad [aws] key fails here, before any work.
        self._backend: Any = None
        self._backend_config: Any = None
        if settings.backend == "aws":
            from config import aws_stores

            self._backend = aws_stores
            self._backend_config = aws_stores.backend_config(settings)

    def _once(self, name: str, build: Callable[[], T]) -> T:
        if name not in self._built:
            self._built[name] = build()
        return self._built[name]

    # -- stores ---------------------------------------------------------------------

    def count_store(self) -> CountStore:
        """Window counts: SQLite under `data_dir`, or DynamoDB `[aws] count_table`."""
        def build() -> CountStore:
            if self._backend is not None:
                return self._backend.count_store(self._backend_config)
            from consumers.sqlite_count_store import SqliteCountStore

            return SqliteCountStore(self.settings.count_db)

        return self._once("count_store", build)

    def object_store(self) -> ObjectStore:
        """Raw events and aggregates: a directory under `data_dir`, or S3 `[aws] bucket`."""
        def build() -> ObjectStore:
            if self._backend is not None:
                return self._backend.object_store(self._backend_config)
            from consumers.local_object_store import LocalObjectStore

            return LocalObjectStore(self.settings.store_dir, background=True)

        return self._once("object_store", build)

    def dead_letters(self) -> DeadLetterSink:
        """The dead-letter file under `data_dir`, on every backend: dead letters
        are for an operator to read and replay, and writing them locally keeps
        a cloud outage from also losing the record of what was rejected."""
        def build() -> DeadLetterSink:
            from consumers.dead_letter_file import DeadLetterFile

            return DeadLetterFile(self.settings.dead_letter_path, self.settings.dead_letter_max_record_bytes)

        return self._once("dead_letters", build)

    def counted_keys(self) -> CountedKeys:
        """Which events a partition already counted, read from the raw-event archive."""
        return CountedKeys(self.object_store())

    # -- sources and transports -------------------------------------------------------

    def file_source(self, path: Path) -> Source:
        """A file (gzip detected) in batches of `[pipeline] batch_size`; bounded."""
        from producers.file_source import FileSource

        return FileSource(path, self.settings.batch_size)

    def random_source(self, seed: int, count: int | None, rate: float | None) -> Source:
        """Seeded random NDJSON events: bounded with a `count`, endless without."""
        from producers.random_source import RandomEventSource

        return RandomEventSource(seed=seed, count=count, rate=rate, batch_size=self.settings.batch_size)

    def reader(self, uri: str, group: str = "default", create_resources: bool = False) -> TransportReader:
        """The transport reader of `uri` (config/transports.py) in consumer `group`.
        `create_resources` first creates what the profile needs beside the
        transport's own stream or queue (config/aws_resources.py)."""
        if create_resources:
            create_profile_resources(self.settings, uri, group)
        return transports.open_reader(uri, self.settings, group=group, create_resources=create_resources)

    def writer(self, uri: str, create_resources: bool = False) -> TransportWriter:
        """The transport writer of `uri` (config/transports.py); `create_resources` as for `reader`."""
        if create_resources:
            create_profile_resources(self.settings, uri)
        return transports.open_writer(uri, self.settings, create_resources=create_resources)

    def spool_status(self, directory: str) -> dict[str, Any]:
        """What the spool in `directory` holds and where each consumer group
        stands, read-only (`producers.spool.read_spool_status`)."""
        from producers.spool import read_spool_status

        return read_spool_status(directory)

    def local_store_status(self) -> list[tuple[str, int, int, int]] | None:
        """(partition, windows, provisional, newest window start) per partition
        of the local count store, read-only; None on the aws backend or when
        there is no store yet. Raises `sqlite3.Error` when it cannot be read."""
        if self.settings.backend != "local" or not self.settings.count_db.is_file():
            return None
        from consumers.sqlite_count_store import read_store_status

        return read_store_status(self.settings.count_db)

    def kinesis_leases(self, stream: str, group: str) -> tuple[str, list[Any]]:
        """(lease table name, the leases of `stream`) of consumer `group`, read
        without creating anything (`status`)."""
        from producers.kinesis_lease_table import LeaseTable, ensure_lease_table

        client, table = ensure_lease_table(self.settings.aws, group, create=False)
        return table, LeaseTable(client, table, stream).scan()

    # -- the HTTP service ---------------------------------------------------------------

    def http_settings(self) -> HttpSettings:
        """`[http]`, parsed and checked (config/http_settings.py)."""
        from config.http_settings import http_settings

        return self._once("http_settings", lambda: http_settings(self.settings))

    def http_service(
        self,
        http: HttpSettings,
        create_resources: bool = False,
        readiness: Callable[[], Mapping[str, Any]] | None = None,
        register_reload: Callable[[str, Callable[[], None]], None] | None = None,
    ) -> tuple[Any, Callable[[], None]]:
        """(app, close): the HTTP app over `http.transport` (this root's writer;
        `create_resources` as for `writer`) and this root's count store, plus the
        Optimizely routes when configured (config/http_service.py). `readiness()`
        adds components to /readyz; `register_reload(name, callback)` is given
        what SIGHUP reloads; `close()` releases the transport writer."""
        from config.http_service import build_service

        return build_service(self.settings, http, self.writer, self.count_store(), create_resources=create_resources,
                             readiness=readiness, register_reload=register_reload)

    # -- the pipeline's sinks ---------------------------------------------------------

    def sinks(self) -> list[Sink]:
        """The sinks of the configured backend, in write order: dead letters and raw
        events first, counts last (so a count is never ahead of its raw data), then
        the Optimizely conversions when `[optimizely.conversions]` maps an event type."""
        from consumers.aggregate_writer import AggregateWriter
        from consumers.count_sink import CountSink
        from consumers.dead_letter_output import DeadLetterOutput
        from consumers.raw_event_writer import RawEventWriter
        from consumers.retrying_ports import RetryingCountStore, RetryingObjectStore

        settings = self.settings
        objects = RetryingObjectStore(self.object_store())
        sinks: list[Sink] = [DeadLetterOutput(self.dead_letters())]
        if settings.raw_events.enabled:
            raw = settings.raw_events
            sinks.append(
                RawEventWriter(
                    objects,
                    format=raw.format,
                    max_bytes=raw.max_bytes,
                    max_age_seconds=raw.max_age.total_seconds(),
                    max_open_objects=raw.max_open_objects,
                    max_buffered_bytes=raw.max_buffered_bytes,
                )
            )
        if settings.aggregates.enabled:
            sinks.append(AggregateWriter(objects, settings.aggregates.key_template))
        sinks.append(CountSink(RetryingCountStore(self.count_store())))
        conversions = self.conversion_sink()
        if conversions is not None:
            sinks.append(conversions)
        return sinks

    # -- Optimizely -------------------------------------------------------------------

    def conversion_sink(self) -> Sink | None:
        """Stream events as Optimizely conversions, or None when
        `[optimizely.conversions]` maps no event type. (The SDK is imported
        only then: it costs memory and start-up time.) Loads the datafile
        (and keeps refreshing it); an event key the datafile lacks is a
        `ConfigError`."""
        if not self.settings.section("optimizely").get("conversions"):
            return None
        from optimizely_integration.bulk_sink import OptimizelyBulkSink
        from optimizely_integration.conversions import ConversionBuilder
        from config.optimizely_settings import optimizely_settings
        from optimizely_integration.datafile import DatafileManager, source_from_settings

        opt = optimizely_settings(self.settings)
        if not opt.conversions:
            return None
        manager = DatafileManager(
            source_from_settings(opt), refresh_interval=opt.datafile_refresh_interval,
            fetch_timeout=opt.datafile_fetch_timeout,
        )
        manager.load()
        manager.start()
        known = manager.project_config().event_key_map
        missing = sorted(key for key in opt.conversions.values() if key not in known)
        if missing:
            raise ConfigError(f"config key optimizely.conversions: event keys not in the datafile: {', '.join(missing)}")
        builder = ConversionBuilder(opt.conversions, manager.project_config, opt.conversion_tag_properties)
        return OptimizelyBulkSink.from_settings(opt, self.dead_letters(), conversions=builder)

    def bucketer(self, activate: bool | None = None, source: Any = None, start_refresh: bool = True) -> Any:
        """The bucketer's parts (`config.optimizely_parts.BucketerParts`):
        the datafile loaded (`DatafileError` if it cannot be), impressions, when
        activated, dispatched to `optimizely.dispatch_to` through this root's writer."""
        from config.optimizely_parts import build_bucketer

        return build_bucketer(self.settings, self.writer, activate=activate, source=source,
                              start_refresh=start_refresh)

    def optimizely_bulk_sink(self) -> Any:
        """The Event API bulk sink of `optimizely-forward` (an `OptimizelyBulkSink`)."""
        from config.optimizely_settings import optimizely_settings
        from optimizely_integration.bulk_sink import OptimizelyBulkSink

        return OptimizelyBulkSink.from_settings(optimizely_settings(self.settings), self.dead_letters())
