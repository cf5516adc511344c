"""Typed settings, loaded from a TOML profile with environment overrides.

This is the only module that reads configuration files. Sections that belong
to one adapter (`[http]`, `[optimizely]`) are parsed by that adapter's own
config dataclass from `Settings.section(name)`; `[aws]`, shared by every AWS
adapter, is parsed here into `aws.settings.AwsConfig` (`Settings.aws`).

Environment overrides: `RIVULET__<SECTION>__<KEY>=value` (value parsed as a
TOML value when it is one, e.g. `10`, `true`, `["a"]`, else a string), plus the
shortcut `RIVULET_DATA_DIR`.

Strict: an unknown section or key, in the profile or in an override, is a
`ConfigError` naming it (and the variable, for an override), with the closest
known key as a hint. `Settings.sources` says where each value set came from.
"""

from __future__ import annotations

import difflib
import importlib
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta, tzinfo
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aws.settings import AwsConfig, AwsConfigError
from consumers.aggregate_writer import check_key_fields, table_root
from consumers.raw_event_writer import FORMATS as RAW_EVENT_FORMATS
from streams.formats import PARSERS
from streams.rollups import RollupSpec
from streams.timestamps import parse_duration
from streams.windowing import TumblingWindower

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_PROFILE = CONFIG_DIR / "local.toml"
ENV_PREFIX = "RIVULET__"


class ConfigError(ValueError):
    """A bad setting; the message names the key."""


@dataclass(frozen=True)
class RawEventsSettings:
    # The layout is fixed (events/dt=YYYY-MM-DD/hour=H/part-*, docs/store.md):
    # event values are columns, never key parts.
    enabled: bool = True
    format: str = "parquet"  # a key of consumers.raw_event_writer.FORMATS
    max_bytes: int = 16 << 20
    max_age: timedelta = timedelta(seconds=60)
    max_open_objects: int = 64
    max_buffered_bytes: int = 32 << 20


@dataclass(frozen=True)
class AggregatesSettings:
    enabled: bool = True
    # Each rollup's table root; the layout below it is fixed
    # (dt=YYYY-MM-DD/hour=H/part-*.parquet, docs/store.md).
    key_template: str = "aggregates/{rollup}"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_log_level(value: object, name: str = "logging.level") -> str:
    """A log level name (any case) as logging's upper-case name, or ConfigError."""
    level = value.upper() if isinstance(value, str) else None
    if level not in LOG_LEVELS:
        raise ConfigError(f"{name}: unknown log level {value!r}, expected one of {', '.join(LOG_LEVELS)}")
    return level


@dataclass(frozen=True)
class LoggingSettings:
    level: str | None = None  # None: the command line's --log-level
    access_log: bool = True  # one INFO line per HTTP request (no credentials)
    progress_interval: timedelta = timedelta(seconds=60)  # INFO progress lines of long jobs


@dataclass(frozen=True)
class Settings:
    profile: str
    backend: str  # "local" or "aws": which adapters config/bindings.py binds
    data_dir: Path
    format: str
    lateness: timedelta
    future_tolerance: timedelta
    naive_timezone: tzinfo | None
    batch_size: int
    max_record_bytes: int
    checkpoint_interval: float
    stop_timeout: timedelta
    provisional_interval: timedelta
    idle_poll_interval: float
    rollups: tuple[RollupSpec, ...]
    query_rollup: str
    query_max_range: timedelta
    raw_events: RawEventsSettings
    aggregates: AggregatesSettings
    dead_letter_max_record_bytes: int
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    # Dotted key -> where its value came from: "file <path>" or "environment <VAR>".
    # Keys not listed have their default.
    sources: Mapping[str, str] = field(default_factory=dict, repr=False)

    def section(self, name: str) -> Mapping[str, Any]:
        return self.sections.get(name, {})

    @property
    def aws(self) -> AwsConfig:
        """The `[aws]` section, parsed and checked when asked for: only where AWS
        is used (the aws backend, a kinesis: or sqs: transport), so a local
        profile is never held to it."""
        return aws_config(self.sections.get("aws", {}))

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def count_db(self) -> Path:
        return self.data_dir / "counts.sqlite3"

    @property
    def dead_letter_path(self) -> Path:
        return self.data_dir / "dead_letters.ndjson"

    def rollup(self, name: str) -> RollupSpec:
        for spec in self.rollups:
            if spec.name == name:
                return spec
        raise ConfigError(f"unknown rollup {name!r}: configured rollups are {', '.join(r.name for r in self.rollups)}")

    def with_overrides(self, **changes: Any) -> "Settings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read a profile (default `config/local.toml`) and apply the environment."""
    environ = os.environ if environ is None else environ
    profile = Path(path) if path else DEFAULT_PROFILE
    try:
        with open(profile, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {profile}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {profile} is not valid TOML: {exc}") from None
    sources = {key: f"file {profile}" for key in _leaf_keys(raw)}
    _apply_environment(raw, environ, sources)
    check_known_keys(raw, sources)
    try:
        return replace(_build(raw, profile), sources=sources)
    except ConfigError as exc:
        raise with_origin(exc, sources) from None


def with_origin(exc: ConfigError, sources: Mapping[str, str]) -> ConfigError:
    """`exc` with the environment variable that set the key it names, if one did."""
    message = str(exc)
    if message.startswith("config key "):
        key = message[len("config key "):].split(":", 1)[0]
        origin = sources.get(key, "")
        if origin.startswith("environment "):
            return ConfigError(f"{origin}: {message}")
    return exc


def _leaf_keys(table: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys.extend(_leaf_keys(value, name + "."))
        else:
            keys.append(name)
    return keys


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str], sources: dict[str, str] | None = None) -> None:
    sources = {} if sources is None else sources
    if environ.get("RIVULET_DATA_DIR"):
        raw.setdefault("pipeline", {})["data_dir"] = environ["RIVULET_DATA_DIR"]
        sources["pipeline.data_dir"] = "environment RIVULET_DATA_DIR"
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            raise ConfigError(f"environment {name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
        if len(path) == 1:
            raise ConfigError(f"environment {name}: names a section, expected {ENV_PREFIX}{path[0].upper()}__<KEY>")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        target = raw
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"environment {name}: {'.'.join(path[:-1])} is not a section")
        target[path[-1]] = value
        sources[".".join(path)] = f"environment {name}"


# The keys of each section this module parses. Adapter sections are parsed by
# their own dataclass (one field per key), imported only when the section is
# set. `[aws]` is checked by `Settings.aws` (`aws_config`), wherever AWS is
# used (the aws backend, a kinesis: or sqs: transport), so a local profile
# never imports boto3.
SECTION_KEYS: dict[str, frozenset[str]] = {
    "pipeline": frozenset({
        "backend", "data_dir", "format", "lateness", "future_tolerance", "naive_timezone", "batch_size",
        "max_record_bytes", "checkpoint_interval", "stop_timeout", "provisional_interval", "idle_poll_interval",
    }),
    "query": frozenset({"rollup", "max_range"}),
    "raw_events": frozenset({"enabled", "format", "max_bytes", "max_age", "max_open_objects", "max_buffered_bytes",
                             "key_template"}),  # key_template: refused with its own message below
    "aggregates": frozenset({"enabled", "key_template"}),
    "dead_letters": frozenset({"max_record_bytes"}),
    "logging": frozenset({"level", "access_log", "progress_interval"}),
}
ROLLUP_KEYS = frozenset({"key", "window"})
ADAPTER_SECTIONS: dict[str, str] = {
    "http": "service.settings:HttpSettings",
    "optimizely": "optimizely_integration.settings:OptimizelySettings",
    "aws": "aws.settings:AwsConfig",
}
SELF_CHECKED_SECTIONS = frozenset({"aws"})


def adapter_keys(section: str) -> frozenset[str] | None:
    """The keys of an adapter's section (its dataclass fields), or None when
    the adapter is not installed."""
    module_name, _, class_name = ADAPTER_SECTIONS[section].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None
        raise
    return frozenset(f.name for f in fields(getattr(module, class_name)))


def aws_config(table: Mapping[str, Any]) -> AwsConfig:
    """The `[aws]` table as an `AwsConfig`; unknown keys, wrong types and values
    out of range are `ConfigError`s that name the key."""
    if not isinstance(table, Mapping):
        raise ConfigError("config key aws: expected a table")
    known = {f.name: f for f in fields(AwsConfig)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"config key aws.{key}: unknown key (known: {', '.join(sorted(known))})")
        default = known[key].default
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ConfigError(f"config key aws.{key}: expected {type(default).__name__}, got {value!r}")
        values[key] = value
    config = AwsConfig(**values)
    try:
        config.validate()
    except AwsConfigError as exc:
        raise ConfigError(str(exc)) from None
    return config


def _unknown(kind: str, name: str, known: frozenset[str] | set[str], sources: Mapping[str, str]) -> ConfigError:
    last = name.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(last, sorted(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else f", expected one of {', '.join(sorted(known))}"
    origin = sources.get(name) or next((v for k, v in sources.items() if k.startswith(name + ".")), "")
    where = f"{origin}: " if origin.startswith("environment ") else ""
    return ConfigError(f"{where}config key {name}: unknown {kind}{hint}")


def check_known_keys(raw: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> None:
    """Refuse any section or key nobody reads: a typo must not be ignored."""
    sources = sources or {}
    sections = set(SECTION_KEYS) | set(ADAPTER_SECTIONS) | {"rollups"}
    for section, table in raw.items():
        if section not in sections:
            raise _unknown("section", section, sections, sources)
        if not isinstance(table, Mapping):
            raise ConfigError(f"config key {section}: expected a table")
        if section == "rollups":
            for name, rollup in table.items():
                if isinstance(rollup, Mapping):
                    for key in rollup:
                        if key not in ROLLUP_KEYS:
                            raise _unknown("key", f"rollups.{name}.{key}", ROLLUP_KEYS, sources)
            continue
        known = SECTION_KEYS.get(section)
        if known is None:
            if not table or section in SELF_CHECKED_SECTIONS:
                continue
            known = adapter_keys(section)
            if known is None:
                continue
        for key in table:
            if key not in known:
                raise _unknown("key", f"{section}.{key}", known, sources)


class _Reader:
    """Typed access to one TOML table, with errors that name the key."""

    def __init__(self, table: Mapping[str, Any], prefix: str) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(f"config key {prefix}: expected a table")
        self.table = table
        self.prefix = prefix

    def _name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = self.table.get(key, default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ConfigError(f"config key {self._name(key)}: expected {expected}, got {value!r}")
        return value

    def positive_int(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value <= 0:
            raise ConfigError(f"config key {self._name(key)}: must be positive, got {value}")
        return value

    def duration(self, key: str, default: str) -> timedelta:
        value = self.table.get(key, default)
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"config key {self._name(key)}: {exc}") from None


def _aggregates(table: _Reader, rollups: list[RollupSpec]) -> AggregatesSettings:
    settings = AggregatesSettings(
        enabled=table.get("enabled", bool, True),
        key_template=table.get("key_template", str, AggregatesSettings.key_template),
    )
    if not settings.enabled:
        return settings
    # Every rollup becomes a table: its name a key segment, its key fields columns.
    try:
        table_root(settings.key_template, "check")
    except ValueError as exc:
        raise ConfigError(f"config key aggregates.key_template: {exc}") from None
    for spec in rollups:
        try:
            table_root(settings.key_template, spec.name)
        except ValueError:
            raise ConfigError(f"config key rollups.{spec.name}: the name cannot be an object key segment") from None
        try:
            check_key_fields(spec.key_fields)
        except ValueError as exc:
            raise ConfigError(f"config key rollups.{spec.name}.key: {exc}") from None
    return settings


_RAW_EVENT_KEYS = frozenset({"enabled", "format", "max_bytes", "max_age", "max_open_objects", "max_buffered_bytes"})


def _raw_events(table: _Reader) -> RawEventsSettings:
    if "key_template" in table.table:
        # The old template put event values in the path (`event_type=x=y/`
        # broke every Hive reader); silently ignoring it would move a user's
        # data without a word.
        raise ConfigError(
            "config key raw_events.key_template: no longer supported, the raw event layout is fixed now "
            "(events/dt=YYYY-MM-DD/hour=H/part-<partition>-<first position>.parquet, event values as columns; "
            "see docs/store.md): remove the key")
    unknown = sorted(set(table.table) - _RAW_EVENT_KEYS)
    if unknown:
        raise ConfigError(f"config key raw_events.{unknown[0]}: unknown key, expected one of {', '.join(sorted(_RAW_EVENT_KEYS))}")
    fmt = table.get("format", str, RawEventsSettings.format)
    if fmt not in RAW_EVENT_FORMATS:
        raise ConfigError(f"config key raw_events.format: unknown format {fmt!r}, expected one of {', '.join(RAW_EVENT_FORMATS)}")
    return RawEventsSettings(
        enabled=table.get("enabled", bool, True),
        format=fmt,
        max_bytes=table.positive_int("max_bytes", RawEventsSettings.max_bytes),
        max_age=table.duration("max_age", "60s"),
        max_open_objects=table.positive_int("max_open_objects", RawEventsSettings.max_open_objects),
        max_buffered_bytes=table.positive_int("max_buffered_bytes", RawEventsSettings.max_buffered_bytes),
    )


def _build(raw: dict[str, Any], profile: Path) -> Settings:
    pipeline = _Reader(raw.get("pipeline", {}), "pipeline")
    fmt = pipeline.get("format", str, "events-csv")
    if fmt not in PARSERS:
        raise ConfigError(f"config key pipeline.format: unknown format {fmt!r}, expected one of {', '.join(PARSERS)}")
    zone_name = pipeline.get("naive_timezone", str, "")
    try:
        zone = ZoneInfo(zone_name) if zone_name else None
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"config key pipeline.naive_timezone: unknown time zone {zone_name!r}") from None
    backend = pipeline.get("backend", str, "local")
    if backend not in ("local", "aws"):
        raise ConfigError(f"config key pipeline.backend: expected 'local' or 'aws', got {backend!r}")

    rollups = []
    tables = raw.get("rollups", {})
    if not isinstance(tables, Mapping) or not tables:
        raise ConfigError("config key rollups: declare at least one [rollups.NAME] table")
    for name, table in tables.items():
        reader = _Reader(table, f"rollups.{name}")
        fields = reader.get("key", list, None)
        if not fields or not all(isinstance(f, str) and f for f in fields):
            raise ConfigError(f"config key rollups.{name}.key: expected a non-empty list of field names")
        window = reader.duration("window", "1h")
        size_us = int(window.total_seconds() * 1_000_000)
        if size_us <= 0 or (86_400_000_000 % size_us and size_us % 86_400_000_000):
            raise ConfigError(f"config key rollups.{name}.window: must divide a day or be whole days, got {window}")
        rollups.append(RollupSpec(name, tuple(fields), TumblingWindower(size_us)))

    raw_events = _Reader(raw.get("raw_events", {}), "raw_events")
    aggregates = _Reader(raw.get("aggregates", {}), "aggregates")
    query = _Reader(raw.get("query", {}), "query")
    dead = _Reader(raw.get("dead_letters", {}), "dead_letters")
    logs = _Reader(raw.get("logging", {}), "logging")
    level = logs.get("level", (str, type(None)), None)
    logging_settings = LoggingSettings(
        level=check_log_level(level, "config key logging.level") if level is not None else None,
        access_log=logs.get("access_log", bool, True),
        progress_interval=logs.duration("progress_interval", "60s"),
    )
    settings = Settings(
        profile=str(profile),
        backend=backend,
        data_dir=Path(pipeline.get("data_dir", str, "data")),
        format=fmt,
        lateness=pipeline.duration("lateness", "10m"),
        future_tolerance=pipeline.duration("future_tolerance", "1d"),
        naive_timezone=zone,
        batch_size=pipeline.positive_int("batch_size", 5000),
        max_record_bytes=pipeline.positive_int("max_record_bytes", 1 << 20),
        checkpoint_interval=pipeline.get("checkpoint_interval", float, 1.0),
        stop_timeout=pipeline.duration("stop_timeout", "30s"),
        provisional_interval=pipeline.duration("provisional_interval", "5s"),
        idle_poll_interval=pipeline.get("idle_poll_interval", float, 0.2),
        rollups=tuple(rollups),
        query_rollup=query.get("rollup", str, "customer_hourly"),
        query_max_range=query.duration("max_range", "3660d"),
        raw_events=_raw_events(raw_events),
        aggregates=_aggregates(aggregates, rollups),
        dead_letter_max_record_bytes=dead.positive_int("max_record_bytes", 64 * 1024),
        sections=raw,
        logging=logging_settings,
    )
    settings.rollup(settings.query_rollup)  # fail early on a typo
    return settings
