"""Datafile management: load, refresh, and rebuild the SDK client on change
(the webhook that asks for a refresh is checked by `webhook_signature`).

Sources: a file path, an http(s) URL, or an SDK key (fetched from
`https://cdn.optimizely.com/datafiles/{sdk_key}.json`). `OPTIMIZELY_DATAFILE`
in the environment (a path or a URL) wins over configuration.

Refresh: a background thread polls every `refresh_interval` seconds (a file
by mtime/size, a URL with `If-None-Match`/`If-Modified-Since`);
`request_refresh()` wakes it at once (the webhook uses it) and
`refresh_now()` fetches on the calling thread. As in the SDK's own
`PollingConfigManager`, a datafile is applied only when its `revision`
changes. A fetch that fails, or returns something that is not a valid
datafile, keeps the current one and logs an error (metric
`rivulet_optimizely_datafile_errors_total`). A revision change is logged and
exposed as `rivulet_optimizely_datafile_revision`.

The SDK client is rebuilt per revision with `ForwardingEventProcessor`: the
SDK's own `BatchEventProcessor` drops events with only a warning when its
1,000-slot queue is full, whereas the forwarding one hands each event straight
to our non-blocking `BulkEventDispatcher`, which counts every drop. Old
clients are not closed (a request may still be using one; they hold no
threads), only the current one on `stop()`.

Usage::

    manager = DatafileManager(resolve_source(datafile="config/datafile.json"), event_dispatcher=dispatcher)
    manager.load()            # raises DatafileError if the first load fails
    manager.start()           # background refresh
    manager.client.activate("exp", "user-1")
    manager.stop()
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from optimizely import optimizely as optimizely_sdk
from optimizely.event.event_processor import ForwardingEventProcessor
from optimizely.helpers import validator
from optimizely.helpers.sdk_settings import OptimizelySdkSettings

from optimizely_integration import metrics
from optimizely_integration.settings import DEFAULT_DATAFILE_URL_TEMPLATE, OptimizelySettings

log = logging.getLogger(__name__)
sdk_log = logging.getLogger("optimizely_integration.sdk")


class _SdkNoise(logging.Filter):
    """Drop SDK messages that are expected in this setup (no SDK key since the
    datafile is managed here; no user profile service) and would otherwise be
    logged at error/warning level on every client build or decision."""

    NOISE = ("SDK key not provided/cannot be found in the datafile", "User profile has invalid format")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOISE)


sdk_log.addFilter(_SdkNoise())

MAX_DATAFILE_BYTES = 20 << 20


class DatafileError(Exception):
    """A datafile could not be loaded; the message says from where and why."""


@dataclass(frozen=True)
class DatafileSource:
    kind: str  # "path" or "url"
    location: str

    @property
    def url(self) -> str:
        """For debug output: the URL, or the file as a file:// URL."""
        return self.location if self.kind == "url" else "file://" + os.path.abspath(self.location)


def resolve_source(
    datafile: str = "",
    sdk_key: str = "",
    url_template: str = DEFAULT_DATAFILE_URL_TEMPLATE,
    environ: Mapping[str, str] | None = None,
) -> DatafileSource:
    """`OPTIMIZELY_DATAFILE` (path or URL), else `datafile`, else the SDK key's CDN URL."""
    environ = os.environ if environ is None else environ
    chosen = environ.get("OPTIMIZELY_DATAFILE") or datafile
    if chosen:
        if chosen.startswith(("http://", "https://")):
            return DatafileSource("url", chosen)
        return DatafileSource("path", chosen)
    if sdk_key:
        return DatafileSource("url", url_template.format(sdk_key=sdk_key))
    raise DatafileError("no Optimizely datafile configured: set optimizely.datafile, optimizely.sdk_key or OPTIMIZELY_DATAFILE")


def source_from_settings(opt: OptimizelySettings, environ: Mapping[str, str] | None = None) -> DatafileSource:
    return resolve_source(opt.datafile, opt.sdk_key, opt.datafile_url_template, environ)


@dataclass(frozen=True)
class DatafileState:
    """One applied datafile: immutable, swapped whole, so readers need no lock."""

    text: str
    revision: str
    client: Any  # optimizely.Optimizely
    project_config: Any  # optimizely.project_config.ProjectConfig
    loaded_at: datetime
    source: DatafileSource


class DatafileManager:
    """See the module docstring. Thread-safe."""

    def __init__(
        self,
        source: DatafileSource | str,
        event_dispatcher: Any = None,
        refresh_interval: float = 300.0,
        fetch_timeout: float = 10.0,
        client_factory: Callable[[str, Any], Any] | None = None,
    ) -> None:
        """`event_dispatcher`: what the clients send impressions/conversions
        with (a `BulkEventDispatcher`); None gives a dispatcher that discards
        them (for read-only use such as the CLI without `--activate`)."""
        if isinstance(source, str):
            source = resolve_source(source, environ={})
        self.source = source
        self.event_dispatcher = event_dispatcher if event_dispatcher is not None else _DiscardingDispatcher()
        self.refresh_interval = refresh_interval
        self.fetch_timeout = fetch_timeout
        self.client_factory = client_factory or self._build_client
        self._state: DatafileState | None = None
        self._refresh_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._validators: dict[str, str] = {}  # ETag / Last-Modified of the applied datafile
        self._pending_validators: dict[str, str] = {}  # ... of the datafile being applied
        self._file_stamp: tuple[int, int] | None = None
        self._listeners: list[Callable[[str | None, str], None]] = []
        self.last_error: str | None = None

    # -- reading -----------------------------------------------------------------

    @property
    def state(self) -> DatafileState | None:
        return self._state

    @property
    def client(self) -> Any:
        state = self._state
        if state is None:
            raise DatafileError("no Optimizely datafile loaded")
        return state.client

    def project_config(self) -> Any:
        state = self._state
        return state.project_config if state is not None else None

    @property
    def revision(self) -> str | None:
        state = self._state
        return state.revision if state is not None else None

    def add_listener(self, callback: Callable[[str | None, str], None]) -> None:
        """`callback(old_revision, new_revision)` after each applied change."""
        self._listeners.append(callback)

    # -- loading -----------------------------------------------------------------

    def load(self) -> DatafileState:
        """The first load: raises `DatafileError` if it fails."""
        if not self._refresh(raise_errors=True) and self._state is None:
            raise DatafileError(f"no datafile at {self.source.url}")
        assert self._state is not None
        return self._state

    def refresh_now(self) -> bool:
        """Fetch now on this thread; True if a new revision was applied. Never raises."""
        return self._refresh(raise_errors=False)

    def request_refresh(self) -> None:
        """Fetch now in the background (returns at once): wakes the poller, or
        starts a one-off thread when no poller runs."""
        if self._thread is not None and self._thread.is_alive():
            self._wake.set()
        else:
            threading.Thread(target=self.refresh_now, name="optimizely-datafile-refresh", daemon=True).start()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="optimizely-datafile", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.fetch_timeout + 1.0)
        state = self._state
        if state is not None:
            state.client.close()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.refresh_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.refresh_now()

    def _refresh(self, raise_errors: bool) -> bool:
        with self._refresh_lock:
            try:
                text = self._fetch()
                if text is None:  # not modified
                    return False
                return self._apply(text)
            except DatafileError as exc:
                self.last_error = str(exc)
                if raise_errors:
                    raise
                kept = f"keeping revision {self.revision}" if self._state else "no datafile loaded yet"
                log.error("optimizely datafile refresh failed, %s: %s", kept, exc)
                return False

    def _fetch(self) -> str | None:
        if self.source.kind == "path":
            return self._read_file()
        return self._fetch_url()

    def _read_file(self) -> str | None:
        path = self.source.location
        try:
            stat = os.stat(path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._file_stamp and self._state is not None:
                return None
            with open(path, "rb") as f:
                data = f.read(MAX_DATAFILE_BYTES + 1)
        except OSError as exc:
            metrics.DATAFILE_ERRORS.labels("fetch").inc()
            raise DatafileError(f"cannot read datafile {path}: {exc}") from None
        self._file_stamp = stamp
        self._pending_validators = {}
        return self._decode(data)

    def _fetch_url(self) -> str | None:
        url = self.source.location
        headers = {"Accept": "application/json", "User-Agent": "rivulet-optimizely/1"}
        if self._state is not None:
            if "etag" in self._validators:
                headers["If-None-Match"] = self._validators["etag"]
            if "last-modified" in self._validators:
                headers["If-Modified-Since"] = self._validators["last-modified"]
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.fetch_timeout) as response:
                data = response.read(MAX_DATAFILE_BYTES + 1)
                validators = {
                    name: value
                    for name in ("etag", "last-modified")
                    if (value := response.headers.get(name))
                }
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return None
            metrics.DATAFILE_ERRORS.labels("fetch").inc()
            raise DatafileError(f"GET {url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            metrics.DATAFILE_ERRORS.labels("fetch").inc()
            raise DatafileError(f"GET {url}: {exc}") from None
        text = self._decode(data)
        self._pending_validators = validators
        return text

    def _decode(self, data: bytes) -> str:
        if len(data) > MAX_DATAFILE_BYTES:
            metrics.DATAFILE_ERRORS.labels("invalid").inc()
            raise DatafileError(f"datafile from {self.source.url} is larger than {MAX_DATAFILE_BYTES} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            metrics.DATAFILE_ERRORS.labels("invalid").inc()
            raise DatafileError(f"datafile from {self.source.url} is not UTF-8") from None

    def _apply(self, text: str) -> bool:
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            metrics.DATAFILE_ERRORS.labels("invalid").inc()
            raise DatafileError(f"datafile from {self.source.url} is not JSON: {exc}") from None
        if not isinstance(parsed, dict) or not validator.is_datafile_valid(text):
            metrics.DATAFILE_ERRORS.labels("invalid").inc()
            raise DatafileError(f"datafile from {self.source.url} fails the SDK's datafile schema")
        revision = str(parsed.get("revision"))
        old = self._state
        if old is not None and old.revision == revision:
            # Same revision: nothing to apply (the SDK's rule), but remember the
            # validators so the next poll can be a cheap 304.
            self._validators = self._pending_validators
            return False
        client = self.client_factory(text, self.event_dispatcher)
        config = client.config_manager.get_config() if getattr(client, "is_valid", False) else None
        if config is None:
            metrics.DATAFILE_ERRORS.labels("invalid").inc()
            raise DatafileError(f"datafile from {self.source.url} was rejected by the SDK (unsupported version?)")
        self._state = DatafileState(text, revision, client, config, datetime.now(timezone.utc), self.source)
        self._validators = self._pending_validators
        self.last_error = None
        metrics.DATAFILE_UPDATES.inc()
        try:
            metrics.DATAFILE_REVISION.set(float(revision))
        except ValueError:
            pass  # revisions are numeric strings in practice; the log has it anyway
        if old is None:
            log.info("optimizely datafile revision %s loaded from %s", revision, self.source.url)
        else:
            log.warning("optimizely datafile revision changed %s -> %s (%s)", old.revision, revision, self.source.url)
        for listener in self._listeners:
            try:
                listener(old.revision if old else None, revision)
            except Exception:  # noqa: BLE001 - a listener must not break refreshes
                log.exception("optimizely datafile listener failed")
        return True

    @staticmethod
    def _build_client(text: str, dispatcher: Any) -> Any:
        return optimizely_sdk.Optimizely(
            datafile=text,
            event_dispatcher=dispatcher,
            event_processor=ForwardingEventProcessor(dispatcher),
            logger=sdk_log,
            skip_json_validation=False,
            settings=OptimizelySdkSettings(odp_disabled=True),
        )


class _DiscardingDispatcher:
    """For clients that must never send (read-only bucketing)."""

    def dispatch_event(self, log_event: Any) -> None:
        return None
