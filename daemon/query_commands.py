"""The store commands: `query buckets` (hourly counts of one customer, as
JSON, optionally drawn) and `export` (every written window of a rollup as CSV).

    rivulet query buckets --customer ID --start TS --end TS [--plot FILE.svg]
    rivulet export --rollup NAME
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from config.root import Components
from config.settings import Settings
from consumers.bucket_query import BadRange, query_buckets
from daemon.commands import CliError, add_common, command
from streams.events import ParseError
from streams.timestamps import parse_timestamp_us
from streams.utc import format_utc_seconds


def add_commands(sub: Any) -> None:
    query = sub.add_parser("query", help="read counts")
    qsub = query.add_subparsers(dest="query_command", required=True)
    buckets = qsub.add_parser("buckets", help="hourly counts of one customer")
    add_common(buckets)
    buckets.add_argument("--customer", required=True)
    buckets.add_argument("--start", required=True)
    buckets.add_argument("--end", required=True)
    buckets.add_argument("--plot", help="also draw the buckets to FILE.svg or FILE.png")

    export = sub.add_parser("export", help="every written window of a rollup as CSV")
    add_common(export)
    export.add_argument("--rollup", required=True)


def require_store(settings: Settings) -> None:
    """A query of a store that does not exist is a user error (a wrong
    --data-dir, a typo), not an empty answer."""
    if settings.backend == "local" and not settings.count_db.is_file():
        raise CliError(f"no count store at {settings.count_db}: check --data-dir / pipeline.data_dir "
                       f"(a store is created by run or consume)")


class _ExistingStore:
    """The root's count store, checked to exist on first use (so that argument
    errors are reported first)."""

    def __init__(self, root: Components) -> None:
        self.root = root

    def __getattr__(self, name: str):
        require_store(self.root.settings)
        return getattr(self.root.count_store(), name)


@command("query")
def cmd_query(args: argparse.Namespace, root: Components) -> int:
    settings = root.settings
    try:
        start_us = parse_timestamp_us(args.start, settings.naive_timezone)
        end_us = parse_timestamp_us(args.end, settings.naive_timezone)
    except ParseError as exc:
        raise CliError(f"bad timestamp: {exc}") from None
    try:
        result = query_buckets(_ExistingStore(root), settings.rollup(settings.query_rollup),
                               settings.query_max_range, args.customer, start_us, end_us)
    except BadRange as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(result))
    if args.plot:
        from consumers.bucket_chart import write_chart

        write_chart(result, args.plot, start_us, end_us)
    return 0


@command("export")
def cmd_export(args: argparse.Namespace, root: Components) -> int:
    settings = root.settings
    spec = settings.rollup(args.rollup)
    require_store(settings)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["window_start", *spec.key_fields, "count"])
    for start, key, count in root.count_store().export(spec.name):
        writer.writerow([format_utc_seconds(start), *key, count])
    return 0
