"""`config`: the effective configuration, each value with where it came from
(the profile, an environment variable, the command line, or the default),
secrets masked.

    rivulet config [--config FILE] [--data-dir DIR] [--json]

The text form is TOML (with a comment per key), so it can be saved as a
profile; masked secrets read `"***"`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

from config.root import Components
from config.settings import Settings
from daemon.commands import add_common, command
from daemon.progress import format_duration

MASK = "***"
# Keys whose values are secrets. `*_env` and `*_file` name where a secret is, not the secret.
_SECRET_KEY = re.compile(r"(secret|password|passwd|token|sdk_key|api_key|access_key|credential)", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)
_URL_QUERY = re.compile(r"\?.*$")
# Values some adapters take from plain environment variables, not RIVULET__*.
SPECIAL_ENVIRONMENT = {
    "optimizely.datafile": "OPTIMIZELY_DATAFILE",
    "optimizely.endpoint": "OPTIMIZELY_EVENT_ENDPOINT",
    "optimizely.eu_endpoint": "OPTIMIZELY_EU_EVENT_ENDPOINT",
}


def add_commands(subparsers: Any) -> None:
    config = subparsers.add_parser(
        "config", help="print the effective configuration, where each value came from, secrets masked")
    add_common(config)
    config.add_argument("--json", action="store_true", help="as JSON: {section: {key: {value, source}}}")


def is_secret(key: str) -> bool:
    return bool(_SECRET_KEY.search(key)) and not key.endswith(("_env", "_file", "_path", "_template"))


def mask(key: str, value: Any) -> Any:
    if is_secret(key) and value not in ("", None):
        return MASK
    if isinstance(value, str) and "://" in value:
        value = _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", value)
        value = _URL_QUERY.sub("?" + MASK, value)
        if key == "datafile" and "/datafiles/" in value:  # the CDN URL holds the SDK key
            value = re.sub(r"/datafiles/[^/]+$", f"/datafiles/{MASK}.json", value)
    return value


def plain(value: Any) -> Any:
    """A value as TOML/JSON would hold it."""
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if value is None:
        return ""
    if hasattr(value, "key"):  # a tzinfo (ZoneInfo)
        return str(value.key)
    return value


def effective(settings: Settings, overrides: Mapping[str, str]) -> dict[str, dict[str, tuple[Any, str]]]:
    """{section: {key: (value, source)}} of everything Rivulet reads."""
    sources = dict(settings.sources)
    sources.update(overrides)

    def source(name: str) -> str:
        special = SPECIAL_ENVIRONMENT.get(name)
        if special and os.environ.get(special):
            return f"environment {special}"
        return sources.get(name, "default")

    def table(section: str, values: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
        return {key: (mask(key, plain(value)), source(f"{section}.{key}")) for key, value in values.items()}

    result: dict[str, dict[str, tuple[Any, str]]] = {}
    result["pipeline"] = table("pipeline", {
        "backend": settings.backend, "data_dir": settings.data_dir, "format": settings.format,
        "lateness": settings.lateness, "future_tolerance": settings.future_tolerance,
        "naive_timezone": settings.naive_timezone, "batch_size": settings.batch_size,
        "max_record_bytes": settings.max_record_bytes, "checkpoint_interval": settings.checkpoint_interval,
        "stop_timeout": settings.stop_timeout, "provisional_interval": settings.provisional_interval,
        "idle_poll_interval": settings.idle_poll_interval,
    })
    for spec in settings.rollups:
        result[f"rollups.{spec.name}"] = table(f"rollups.{spec.name}", {
            "key": list(spec.key_fields), "window": timedelta(microseconds=spec.window.size_us)})
    result["query"] = table("query", {"rollup": settings.query_rollup, "max_range": settings.query_max_range})
    result["raw_events"] = table("raw_events", dataclasses.asdict(settings.raw_events))
    result["aggregates"] = table("aggregates", dataclasses.asdict(settings.aggregates))
    result["dead_letters"] = table("dead_letters", {"max_record_bytes": settings.dead_letter_max_record_bytes})
    result["logging"] = table("logging", dataclasses.asdict(settings.logging))
    for section, parse in _adapters(settings).items():
        result[section] = table(section, {f.name: getattr(parse, f.name) for f in dataclasses.fields(parse)})
    return result


def _adapters(settings: Settings) -> dict[str, Any]:
    """The adapter sections, parsed (and so checked) by their own dataclasses."""
    adapters: dict[str, Any] = {}
    try:
        from config.http_settings import http_settings
    except ImportError:
        pass
    else:
        adapters["http"] = http_settings(settings)
    try:
        from config.optimizely_settings import optimizely_settings
    except ImportError:
        pass
    else:
        adapters["optimizely"] = optimizely_settings(settings)
    if settings.backend == "aws" or settings.section("aws"):  # [aws] is held to its rules only where AWS is in play
        adapters["aws"] = settings.aws
    return adapters


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value), ensure_ascii=False)


def render(settings: Settings, table: Mapping[str, Mapping[str, tuple[Any, str]]]) -> str:
    lines = [f"# Effective configuration: profile {settings.profile}",
             "# Each value's source: file (the profile), environment VARIABLE, command line, or default."]
    for section, values in table.items():
        lines.append("")
        lines.append(f"[{section}]")
        width = max((len(f"{k} = {toml_value(v)}") for k, (v, _) in values.items()), default=0)
        for key, (value, source) in values.items():
            text = f"{key} = {toml_value(value)}"
            shown = "file" if source.startswith("file ") else source
            lines.append(f"{text.ljust(min(width, 60))}  # {shown}")
    return "\n".join(lines)


@command("config")
def cmd_config(args: argparse.Namespace, root: Components) -> int:
    settings = root.settings
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["pipeline.data_dir"] = "command line --data-dir"
    table = effective(settings, overrides)  # a bad adapter section: ConfigError
    if args.json:
        print(json.dumps({section: {k: {"value": v, "source": src} for k, (v, src) in values.items()}
                          for section, values in table.items()}, indent=2))
    else:
        print(render(settings, table))
    return 0
