"""`[http]` and the rest of what the HTTP service is configured with, parsed
from `Settings` into `service.settings`' typed dataclasses.

Strict like the rest of the profile: a wrong type or value is a `ConfigError`
naming `http.KEY` (unknown keys are refused by `config.settings`, against the
fields of `HttpSettings`).

Usage::

    http = http_settings(settings)              # HttpSettings
    app = build_app(service_settings(settings), writer, store, credentials)
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

from config.settings import ConfigError, Settings
from service.settings import EventRules, HttpSettings, QueryRules, ServiceSettings
from streams.timestamps import parse_duration


def http_settings(settings: Settings) -> HttpSettings:
    """Parse `[http]`; relative defaults live under `settings.data_dir`.

    Raises `ConfigError` naming the key on a wrong type or value.
    """
    table = settings.section("http")
    if not isinstance(table, Mapping):
        raise ConfigError("config key http: expected a table")
    r = _Keys(table)
    d = HttpSettings
    transport = r.text("transport", "") or f"spool:{settings.data_dir / 'spool'}"
    credentials = r.text("credentials_file", "") or str(settings.data_dir / "credentials.json")
    max_range = r.duration("query_max_range", None) or settings.query_max_range
    ledger = r.text("idempotency_file", "") or str(settings.data_dir / "idempotency.sqlite3")
    skew = r.duration("max_clock_skew", None)
    http = HttpSettings(
        enabled=r.boolean("enabled", False),
        host=r.text("host", d.host) or d.host,
        port=r.integer("port", d.port, minimum=0, maximum=65535),
        transport=transport,
        credentials_file=Path(credentials),
        max_body_bytes=r.integer("max_body_bytes", d.max_body_bytes, minimum=1),
        max_batch=r.integer("max_batch", d.max_batch, minimum=1),
        query_max_range=max_range,
        max_chart_buckets=r.integer("max_chart_buckets", d.max_chart_buckets, minimum=1),
        auth_failure_limit=r.integer("auth_failure_limit", d.auth_failure_limit, minimum=1),
        auth_failure_window=r.duration("auth_failure_window", None) or d.auth_failure_window,
        retry_after_seconds=r.integer("retry_after_seconds", d.retry_after_seconds, minimum=1),
        bucketer_public=r.boolean("bucketer_public", False),
        restrict_buckets_to_user=r.boolean("restrict_buckets_to_user", False),
        page_view_rollup=r.text("page_view_rollup", d.page_view_rollup),
        button_click_rollup=r.text("button_click_rollup", d.button_click_rollup),
        idempotency_file=Path(ledger),
        idempotency_retention=r.duration("idempotency_retention", None) or d.idempotency_retention,
        max_clock_skew=d.max_clock_skew if skew is None else skew,
    )
    if http.auth_failure_window.total_seconds() <= 0:
        raise ConfigError("config key http.auth_failure_window: must be positive")
    if http.idempotency_retention.total_seconds() <= 0:
        raise ConfigError("config key http.idempotency_retention: must be positive")
    if max_range.total_seconds() <= 0:
        raise ConfigError("config key http.query_max_range: must be positive")
    return http


def service_settings(settings: Settings, http: HttpSettings | None = None) -> ServiceSettings:
    """The HTTP service's settings: `[http]` (parsed here unless given), the
    collector's event rules from `[pipeline]`, the rollups of the count routes."""
    http = http or http_settings(settings)
    events = EventRules(
        max_record_bytes=settings.max_record_bytes,
        naive_timezone=settings.naive_timezone,
        future_tolerance=settings.future_tolerance,
        lateness=settings.lateness,
    )
    # `[http] query_max_range` may be tighter than the CLI's `[query] max_range`.
    queries = QueryRules(
        rollups=settings.rollups,
        query_rollup=settings.query_rollup,
        max_range=http.query_max_range,
        naive_timezone=settings.naive_timezone,
    )
    return ServiceSettings(http, events, queries)


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
