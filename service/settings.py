"""`[http]`: the settings of the HTTP service, parsed from `Settings.section("http")`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

from config.settings import ConfigError, Settings
from streams.timestamps import parse_duration


@dataclass(frozen=True)
class HttpSettings:
    """Every `[http]` key, typed; defaults fill what the profile leaves out."""

    enabled: bool = False  # run the server inside `consume` / endless `run`
    host: str = "127.0.0.1"
    port: int = 8080
    transport: str = "spool:data/spool"  # where the collector puts events
    credentials_file: Path = Path("data/credentials.json")
    max_body_bytes: int = 1_048_576
    max_batch: int = 1000  # events per POST /events array
    query_max_range: timedelta = timedelta(days=3660)
    max_chart_buckets: int = 5000
    auth_failure_limit: int = 10  # failed logins per client before 429 ...
    auth_failure_window: timedelta = timedelta(minutes=1)  # ... refilled over this
    retry_after_seconds: int = 1  # Retry-After of a 503 when the transport is full
    bucketer_public: bool = False  # Optimizely routes without Basic auth
    restrict_buckets_to_user: bool = False  # a user may only query its own buckets
    page_view_rollup: str = "page_view_url_hourly"
    button_click_rollup: str = "button_click_hourly"
    idempotency_file: Path = Path("data/idempotency.sqlite3")  # (user, event_id) pairs already sent
    idempotency_retention: timedelta = timedelta(hours=24)  # a resend within this counts once
    max_clock_skew: timedelta = timedelta(minutes=1)  # client timestamps ahead of the collector's clock

    @classmethod
    def from_settings(cls, settings: Settings) -> "HttpSettings":
        """Parse `[http]`; relative defaults live under `settings.data_dir`.

        Raises `ConfigError` naming the key on a wrong type or value.
        """
        table = settings.section("http")
        if not isinstance(table, Mapping):
            raise ConfigError("config key http: expected a table")
        r = _Keys(table)
        transport = r.text("transport", "") or f"spool:{settings.data_dir / 'spool'}"
        credentials = r.text("credentials_file", "") or str(settings.data_dir / "credentials.json")
        max_range = r.duration("query_max_range", None) or settings.query_max_range
        ledger = r.text("idempotency_file", "") or str(settings.data_dir / "idempotency.sqlite3")
        skew = r.duration("max_clock_skew", None)
        http = cls(
            enabled=r.boolean("enabled", False),
            host=r.text("host", cls.host) or cls.host,
            port=r.integer("port", cls.port, minimum=0, maximum=65535),
            transport=transport,
            credentials_file=Path(credentials),
            max_body_bytes=r.integer("max_body_bytes", cls.max_body_bytes, minimum=1),
            max_batch=r.integer("max_batch", cls.max_batch, minimum=1),
            query_max_range=max_range,
            max_chart_buckets=r.integer("max_chart_buckets", cls.max_chart_buckets, minimum=1),
            auth_failure_limit=r.integer("auth_failure_limit", cls.auth_failure_limit, minimum=1),
            auth_failure_window=r.duration("auth_failure_window", None) or cls.auth_failure_window,
            retry_after_seconds=r.integer("retry_after_seconds", cls.retry_after_seconds, minimum=1),
            bucketer_public=r.boolean("bucketer_public", False),
            restrict_buckets_to_user=r.boolean("restrict_buckets_to_user", False),
            page_view_rollup=r.text("page_view_rollup", cls.page_view_rollup),
            button_click_rollup=r.text("button_click_rollup", cls.button_click_rollup),
            idempotency_file=Path(ledger),
            idempotency_retention=r.duration("idempotency_retention", None) or cls.idempotency_retention,
            max_clock_skew=cls.max_clock_skew if skew is None else skew,
        )
        if http.auth_failure_window.total_seconds() <= 0:
            raise ConfigError("config key http.auth_failure_window: must be positive")
        if http.idempotency_retention.total_seconds() <= 0:
            raise ConfigError("config key http.idempotency_retention: must be positive")
        if max_range.total_seconds() <= 0:
            raise ConfigError("config key http.query_max_range: must be positive")
        return http


class _Keys:
    """Typed reads of one table, with errors that name `http.KEY`."""

    def __init__(self, table: Mapping[str, Any]) -> None:
        self.table = table

    def _fail(self, key: str, expected: str, value: object) -> ConfigError:
        return ConfigError(f"config key http.{key}: expected {expected}, got {value!r}")

    def text(self, key: str, default: str) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, "a string", value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def integer(self, key: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "an integer", value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise self._fail(key, f"an integer {bounds}", value)
        return value

    def duration(self, key: str, default: str | None) -> timedelta | None:
        value = self.table.get(key, default)
        if value is None or value == "":
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"config key http.{key}: {exc}") from None
