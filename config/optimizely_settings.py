"""The `[optimizely]` config section, parsed and checked into the typed
`OptimizelySettings` of the integration.

Usage::

    from config.settings import load_settings
    opt = optimizely_settings(load_settings())
    opt.endpoint, opt.max_visitors, opt.conversions
    parse_optimizely_section({"max_visitors": 500}, environ={})

Environment: `OPTIMIZELY_DATAFILE` (path or URL) overrides `datafile`;
`OPTIMIZELY_EVENT_ENDPOINT` overrides `endpoint` (and
`OPTIMIZELY_EU_EVENT_ENDPOINT` `eu_endpoint`); the webhook secret is read
from the variable named by `webhook_secret_env` (never from the file). Every
key can also be set with the generic `RIVULET__OPTIMIZELY__<KEY>`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from config.settings import ConfigError, Settings
from optimizely_integration.payload_splitter import NULL_VARIATION_MODES
from optimizely_integration.settings import OptimizelySettings


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


def optimizely_settings(settings: Settings, environ: Mapping[str, str] | None = None) -> OptimizelySettings:
    """Parse `settings.section("optimizely")`; missing keys take the defaults."""
    return parse_optimizely_section(settings.section("optimizely"), environ)


def parse_optimizely_section(table: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> OptimizelySettings:
    """`OptimizelySettings` from the section's table, or a `ConfigError` naming the key."""
    environ = os.environ if environ is None else environ
    if not isinstance(table, Mapping):
        raise ConfigError("config key optimizely: expected a table")
    d = OptimizelySettings()
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
    return OptimizelySettings(
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
