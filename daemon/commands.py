"""The command registry: what every command module needs from the CLI,
without importing the CLI itself (`daemon/cli.py` imports the command
modules, never the other way round).

A command module has `add_commands(subparsers)`, which adds its subcommands
(with `add_common` for the options every command takes), and registers each
handler with `@command(name)`. A handler gets the parsed arguments and the
composition root, returns the exit status, and reports a user error by
raising `CliError` (one line on stderr, exit 2).

Usage::

    @command("export")
    def cmd_export(args: argparse.Namespace, root: Components) -> int:
        for start, key, count in root.count_store().export(args.rollup):
            ...
        raise CliError("no count store at ...")
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace, Any], int]
COMMANDS: dict[str, Handler] = {}


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def command(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = handler
        return handler

    return register


def add_common(p: argparse.ArgumentParser) -> None:
    """The options of every command that reads the configuration."""
    p.add_argument("--config", help="TOML profile (default config/local.toml)")
    p.add_argument("--data-dir", help="where local stores live (overrides pipeline.data_dir)")
