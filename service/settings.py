"""What the HTTP service is told: typed, checked settings it never reads itself.

The composition root parses the profile (`config.http_settings`) and hands the
service a `ServiceSettings`: `[http]` as `HttpSettings`, the collector's event
rules (from `[pipeline]`) as `EventRules`, the count queries' rollups and
limits as `QueryRules`. Nothing in `service/` reads configuration.

Usage::

    from config.http_settings import service_settings

    app = build_app(service_settings(settings), writer, store, credentials)
    spec = app.state.context.queries.rollup("customer_hourly")   # UnknownRollup if none
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta, tzinfo
from pathlib import Path

from streams.rollups import RollupSpec


@dataclass(frozen=True)
class HttpSettings:
    """Every `[http]` key, typed; defaults fill what the profile leaves out.
    (`config.settings` checks a profile's `[http]` keys against these fields.)"""

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


@dataclass(frozen=True)
class EventRules:
    """What the collector holds an event to: the pipeline's own rules
    (`[pipeline]`), so that an event it accepts is one the pipeline counts."""

    max_record_bytes: int  # the event as an NDJSON record
    naive_timezone: tzinfo | None  # of timestamps without an offset; None: refused
    future_tolerance: timedelta  # how far ahead of the clock an event time may be
    lateness: timedelta  # how far behind the watermark an event is still counted


class UnknownRollup(LookupError):
    """A rollup name the profile does not declare (the route answers 503)."""


@dataclass(frozen=True)
class QueryRules:
    """What the count routes read with: the declared rollups and the limits of a
    bucket query."""

    rollups: tuple[RollupSpec, ...]
    query_rollup: str  # the rollup of bucket queries (`[query] rollup`)
    max_range: timedelta  # the longest bucket query (`[http] query_max_range`)
    naive_timezone: tzinfo | None  # of query bounds without an offset

    def rollup(self, name: str) -> RollupSpec:
        for spec in self.rollups:
            if spec.name == name:
                return spec
        raise UnknownRollup(f"unknown rollup {name!r}: configured rollups are {', '.join(r.name for r in self.rollups)}")


@dataclass(frozen=True)
class ServiceSettings:
    """Everything the HTTP service is configured with."""

    http: HttpSettings
    events: EventRules
    queries: QueryRules
