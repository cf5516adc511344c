"""The `[optimizely]` config section as a typed dataclass.

Usage::

    from config.settings import load_settings
    opt = OptimizelySettings.from_settings(load_settings())
    opt.endpoint, opt.max_visitors, opt.conversions

Environment: `OPTIMIZELY_DATAFILE` (path or URL) overrides `datafile`;
`OPTIMIZELY_EVENT_ENDPOINT` overrides `endpoint`; the webhook secret is read
from the variable named by `webhook_secret_env` (never from the file). Every
key can also be set with the generic `RIVULET__OPTIMIZELY__<KEY>`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from config.settings import ConfigError

DEFAULT_EVENT_ENDPOINT = "https://logx.optimizely.com/v1/events"
EU_EVENT_ENDPOINT = "https://eu.logx.optimizely.com/v1/events"
DEFAULT_DATAFILE_URL_TEMPLATE = "https://cdn.optimizely.com/datafiles/{sdk_key}.json"
NULL_VARIATION_MODES = ("dead_letter", "drop", "send")


def _get(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = table.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"config key optimizely.{key}: expected {expected}, got {value!r}")
    return value


def _positive(table: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = _get(table, key, kind, default)
    if value <= 0:
        raise ConfigError(f"config key optimizely.{key}: must be positive, got {value}")
    return value


@dataclass(frozen=True)
class OptimizelySettings:
    datafile: str = ""  # a path or an http(s) URL; "" = use sdk_key (or no datafile)
    sdk_key: str = ""
    datafile_url_template: str = DEFAULT_DATAFILE_URL_TEMPLATE
    datafile_refresh_interval: float = 300.0
    datafile_fetch_timeout: float = 10.0
    endpoint: str = DEFAULT_EVENT_ENDPOINT  # where US (default-region) payloads go
    eu_endpoint: str = EU_EVENT_ENDPOINT  # where payloads built for "region": "EU" go
    max_visitors: int = 1000  # visitors per request body
    max_body_bytes: int = 3_000_000  # Optimizely documents 3.5 MB; keep a margin
    flush_interval: float = 10.0  # seconds an open request body may wait
    request_timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    senders: int = 2  # worker threads, each with one keep-alive connection
    send_queue: int = 8  # sealed bodies waiting for a sender (backpressure beyond)
    null_variation: str = "dead_letter"  # dead_letter | drop | send (see docs/optimizely.md)
    dispatch_to: str = ""  # transport of the SDK's payloads; "" = spool:<data_dir>/optimizely-spool
    dispatcher_buffer: int = 10_000
    conversions: Mapping[str, str] = field(default_factory=dict)  # event_type -> datafile event key
    conversion_tag_properties: tuple[str, ...] = ()
    webhook_secret_env: str = "OPTIMIZELY_WEBHOOK_SECRET"
    bucketer_public: bool = False
    bucketer_activate: bool = True  # the HTTP bucketer sends an impression per call

    @classmethod
    def from_settings(cls, settings: Any, environ: Mapping[str, str] | None = None) -> "OptimizelySettings":
        """Parse `settings.section("optimizely")`; missing keys take the defaults."""
        return cls.from_table(settings.section("optimizely"), environ)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> "OptimizelySettings":
        environ = os.environ if environ is None else environ
        if not isinstance(table, Mapping):
            raise ConfigError("config key optimizely: expected a table")
        d = cls()
        conversions = table.get("conversions", {})
        if not isinstance(conversions, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in conversions.items()
        ):
            raise ConfigError('config key optimizely.conversions: expected a table of event_type = "event_key"')
        tags = table.get("conversion_tag_properties", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ConfigError("config key optimizely.conversion_tag_properties: expected a list of property names")
        null_variation = _get(table, "null_variation", str, d.null_variation)
        if null_variation not in NULL_VARIATION_MODES:
            raise ConfigError(
                f"config key optimizely.null_variation: expected one of {', '.join(NULL_VARIATION_MODES)}, got {null_variation!r}"
            )
        endpoint = environ.get("OPTIMIZELY_EVENT_ENDPOINT") or _get(table, "endpoint", str, d.endpoint)
        datafile = environ.get("OPTIMIZELY_DATAFILE") or _get(table, "datafile", str, d.datafile)
        template = _get(table, "datafile_url_template", str, d.datafile_url_template)
        if "{sdk_key}" not in template:
            raise ConfigError("config key optimizely.datafile_url_template: must contain {sdk_key}")
        return cls(
            datafile=datafile,
            sdk_key=_get(table, "sdk_key", str, d.sdk_key),
            datafile_url_template=template,
            datafile_refresh_interval=_positive(table, "datafile_refresh_interval", float, d.datafile_refresh_interval),
            datafile_fetch_timeout=_positive(table, "datafile_fetch_timeout", float, d.datafile_fetch_timeout),
            endpoint=endpoint,
            eu_endpoint=environ.get("OPTIMIZELY_EU_EVENT_ENDPOINT") or _get(table, "eu_endpoint", str, d.eu_endpoint),
            max_visitors=_positive(table, "max_visitors", int, d.max_visitors),
            max_body_bytes=_positive(table, "max_body_bytes", int, d.max_body_bytes),
            flush_interval=_positive(table, "flush_interval", float, d.flush_interval),
            request_timeout=_positive(table, "request_timeout", float, d.request_timeout),
            backoff_base=_positive(table, "backoff_base", float, d.backoff_base),
            backoff_cap=_positive(table, "backoff_cap", float, d.backoff_cap),
            senders=_positive(table, "senders", int, d.senders),
            send_queue=_positive(table, "send_queue", int, d.send_queue),
            null_variation=null_variation,
            dispatch_to=_get(table, "dispatch_to", str, d.dispatch_to),
            dispatcher_buffer=_positive(table, "dispatcher_buffer", int, d.dispatcher_buffer),
            conversions=dict(conversions),
            conversion_tag_properties=tuple(tags),
            webhook_secret_env=_get(table, "webhook_secret_env", str, d.webhook_secret_env),
            bucketer_public=_get(table, "bucketer_public", bool, d.bucketer_public),
            bucketer_activate=_get(table, "bucketer_activate", bool, d.bucketer_activate),
        )

    def dispatch_uri(self, settings: Any) -> str:
        """`dispatch_to`, or the default spool under the pipeline's data_dir."""
        return self.dispatch_to or f"spool:{settings.data_dir / 'optimizely-spool'}"

    def webhook_secret(self, environ: Mapping[str, str] | None = None) -> str:
        """The webhook HMAC secret, "" when unset (the webhook route is then disabled)."""
        environ = os.environ if environ is None else environ
        return environ.get(self.webhook_secret_env, "") if self.webhook_secret_env else ""
