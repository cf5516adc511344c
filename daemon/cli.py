"""The command line entry: builds the parser from the command modules, loads
the settings, builds the composition root (`config.bindings.configure`: the
root, bound in `inject`) and runs one command with it.

Every command reports a bad argument, config or input file in one line on
stderr and exits 2; bad records never stop a command (they are
dead-lettered). A bug is not a user error: it ends with its traceback and
exit 1.

Usage::

    rivulet run --input samples/events_sample.csv
    python run_stream_processing.py --help
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Sequence

import inject

from config.bindings import configure
from config.root import Components
from config.settings import ConfigError, Settings, check_log_level, load_settings
from daemon import (
    config_command,
    http_commands,
    ops_commands,
    optimizely_commands,
    pipeline_commands,
    query_commands,
    status_command,
)
from daemon.commands import COMMANDS, EXIT_USAGE, CliError
from daemon.reload import on_reload
from producers.transport import BadTransportUri
from streams.formats import PARSERS
from streams.timestamps import parse_duration

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_SAMPLE = PROJECT_ROOT / "samples" / "events_sample.csv"

# In the order `--help` lists them.
COMMAND_MODULES = (pipeline_commands, query_commands, http_commands, optimizely_commands, ops_commands,
                   config_command, status_command)


def build_parser() -> argparse.ArgumentParser:
    from daemon.version import __version__

    parser = argparse.ArgumentParser(
        prog="rivulet",
        description="Rivulet: event-time window counts from files, spools, Kinesis and HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"rivulet {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG | INFO | WARNING (default) | ERROR | CRITICAL")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    sub = parser.add_subparsers(dest="command")
    for module in COMMAND_MODULES:
        module.add_commands(sub)
    return parser


def load_for(args: argparse.Namespace) -> Settings:
    """The settings of the command line: the profile, the environment, the flags."""
    settings = load_settings(getattr(args, "config", None))
    changes: dict[str, object] = {}
    if getattr(args, "data_dir", None):
        changes["data_dir"] = Path(args.data_dir)
    if getattr(args, "lateness", None):
        try:
            changes["lateness"] = parse_duration(args.lateness)
        except ValueError as exc:
            raise CliError(f"--lateness: {exc}") from None
    if getattr(args, "format", None):
        if args.format not in PARSERS:
            raise CliError(f"--format: unknown format {args.format!r}, expected one of {', '.join(PARSERS)}")
        changes["format"] = args.format
    return settings.with_overrides(**changes)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors a command words for its user (exit 2): a bad argument,
    setting or input, a missing or unreachable resource, a file system
    refusal. AWS errors count only once AWS is loaded: local mode never
    imports boto3."""
    errors: list[type[BaseException]] = [CliError, ConfigError, BadTransportUri, OSError]
    aws = sys.modules.get("aws.errors")
    if aws is not None:
        errors.append(aws.AwsError)
    return tuple(errors)


def _reload_log_level(args: argparse.Namespace) -> None:
    level = load_settings(getattr(args, "config", None)).logging.level or args.log_level
    logging.getLogger().setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv and BUNDLED_SAMPLE.is_file():
        argv = ["run", "--input", str(BUNDLED_SAMPLE)]
    args = parser.parse_args(argv)
    from daemon.gc_policy import relax_garbage_collection
    from daemon.logs import setup_logging

    try:
        args.log_level = check_log_level(args.log_level, "--log-level")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(args.log_level, args.log_format)
    relax_garbage_collection()
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        configure(load_for(args))  # the composition root, bound in the injector
        root = inject.instance(Components)
        configured_level = root.settings.logging.level
        if configured_level and args.log_level == "WARNING":
            logging.getLogger().setLevel(configured_level)
        on_reload("log level", lambda: _reload_log_level(args))
        return COMMANDS[args.command](args, root)
    except BrokenPipeError:  # `... | head`: the reader has all it wanted (an OSError: caught first)
        _quiet_stdout()
        return 0
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise  # a bug: its traceback, exit 1
        _error_line(str(exc))
        return EXIT_USAGE
    finally:
        multiprocessing.active_children()
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()


def _error_line(message: str) -> None:
    """`error: ...` on stderr: one line, secrets redacted."""
    from observability.redaction import redact

    print(f"error: {redact(' '.join(message.split()))}", file=sys.stderr)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: the interpreter's last flush of a closed
    pipe would print an error of its own."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
