"""CLI commands of the HTTP service: `serve` and `users add`, plus
`embedded_http`, which runs the same server inside `consume` (and `run` on an
endless source) when `[http] enabled = true`. The composition root builds the
app (`Components.http_service`, config/http_service.py); these commands run it.

    python run_stream_processing.py serve [--host 127.0.0.1] [--port N] [--config FILE]
    python run_stream_processing.py users add NAME [--config FILE]   # password: prompt or stdin
    python run_stream_processing.py users list | remove NAME
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import sys
from typing import Any, Iterator, TextIO

from config.root import Components
from producers.transport import TransportReader
from daemon.commands import CliError, add_common, command
from observability.health import PipelineHealth
from daemon.reload import install_sighup_handler, on_reload
from daemon.service_loop import ServiceLoop

log = logging.getLogger(__name__)

MAX_PASSWORD_INPUT = 64 * 1024


def add_commands(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="run the HTTP service (collector, counts, buckets, ops) in the foreground")
    add_common(serve)
    serve.add_argument("--host", help="address to listen on (default [http] host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default [http] port; 0 picks a free one)")
    serve.add_argument("--create-resources", action="store_true", help="create the collector's stream or queue if missing")
    serve.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")

    users = subparsers.add_parser("users", help="manage the HTTP service's Basic auth users")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = users_sub.add_parser("add", help="add a user or change its password (prompt, or stdin without a terminal)")
    add_common(add)
    add.add_argument("name")
    listing = users_sub.add_parser("list", help="the users of the credentials file (names only)")
    add_common(listing)
    remove = users_sub.add_parser("remove", help="remove a user (the server drops it at its next request)")
    add_common(remove)
    remove.add_argument("name")


# -- serve ---------------------------------------------------------------------------


@command("serve")
def cmd_serve(args: argparse.Namespace, root: Components) -> int:
    from service.runner import ServerStartError, serve_forever

    settings = root.settings
    http = root.http_settings()
    host = args.host or http.host
    port = http.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise CliError(f"--port {port}: expected 0-65535")
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise CliError("give both --ssl-certfile and --ssl-keyfile, or neither")
    for flag, path in (("--ssl-certfile", args.ssl_certfile), ("--ssl-keyfile", args.ssl_keyfile)):
        if path and not os.path.isfile(path):
            raise CliError(f"{flag} {path}: file not found")
    log.info("serve: starting: profile %s (backend %s), %s:%s, collector -> %s, credentials %s, access log %s",
             settings.profile, settings.backend, host, port, http.transport, http.credentials_file,
             "on" if settings.logging.access_log else "off")
    app, close = root.http_service(http, create_resources=args.create_resources, register_reload=on_reload)
    scheme = "https" if args.ssl_certfile else "http"

    def announce(bound_host: str, bound_port: int) -> None:
        # One parseable line on stdout: scripts (and tests) read the port from it.
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"serving on {scheme}://{shown}:{bound_port} (collector -> {http.transport})", flush=True)

    tls = {"ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile} if args.ssl_certfile else {}
    # sd_notify: READY=1 once the socket is bound, the watchdog while serving
    # (no pipeline here, so no progress is expected of one), STOPPING=1 at exit.
    with ServiceLoop("serve", health=PipelineHealth(stall_seconds=float("inf"))) as service:
        def ready(bound_host: str, bound_port: int) -> None:
            announce(bound_host, bound_port)
            service.ready(f"on port {bound_port}")
            log.info("serve: ready on %s://%s:%d", scheme, bound_host, bound_port)

        install_sighup_handler()
        try:
            serve_forever(app, host, port, announce=ready, **tls)
        except ServerStartError as exc:
            raise CliError(str(exc)) from None
        finally:
            close()
    log.info("serve: stopped")
    return 0


# -- inside consume / run --------------------------------------------------------------


@contextlib.contextmanager
def embedded_http(root: Components, source: TransportReader | None = None, endless: bool = True) -> Iterator[Any]:
    """Serve HTTP on a background thread for the duration of a long-running
    command when `[http] enabled`; yields the server handle or None.

    /readyz then also reports `source` (the transport reader given) and
    `pipeline` (observability.health: progress, failing sinks and sources); a finite
    command (`endless` False) serves nothing."""
    http = root.http_settings()
    if not http.enabled or not endless:
        yield None
        return
    from service.runner import ServerStartError, start_http_server

    app, close = root.http_service(http, readiness=lambda: _pipeline_readiness(source), register_reload=on_reload)
    try:
        handle = start_http_server(app, http.host, http.port)
    except ServerStartError as exc:
        close()
        raise CliError(str(exc)) from None
    print(f"http: serving on {handle.url}", file=sys.stderr, flush=True)
    try:
        yield handle
    finally:
        handle.stop()
        close()


def _pipeline_readiness(source: TransportReader | None) -> dict[str, Any]:
    """The pipeline this process runs: its source, and `observability.health` (progress
    within the stall limit; sinks and sources that reported failures)."""
    components: dict[str, Any] = {}
    if source is not None:
        seconds = source.caught_up_seconds()
        components["source"] = (True, f"caught up for {seconds:.1f} s" if seconds > 0 else "reading")
    try:
        from observability.health import HEALTH
    except ImportError:
        return components
    problems = HEALTH.problems()
    detail = "; ".join(f"{name}: {why}" for name, why in problems.items())
    components["pipeline"] = (not problems, detail or f"{HEALTH.events:,} events, {HEALTH.rate():,.0f}/s")
    return components


# -- users -----------------------------------------------------------------------------


@command("users")
def cmd_users(args: argparse.Namespace, root: Components) -> int:
    from service.auth import CredentialsError, CredentialStore, validate_username

    path = root.http_settings().credentials_file
    if args.users_command == "list":
        return _list_users(path)
    if args.users_command == "remove":
        return _remove_user(path, args.name)
    try:
        validate_username(args.name)
        password = read_password(sys.stdin)
        created = CredentialStore(path).add_user(args.name, password)
    except CredentialsError as exc:
        raise CliError(str(exc)) from None
    print(f"{'added' if created else 'updated'} user {args.name} in {path}")
    return 0


def _list_users(path: Any) -> int:
    from service.auth import CredentialsError, load_users

    if not path.exists():
        print(f"no users: {path} does not exist (add one with `users add NAME`)", file=sys.stderr)
        return 0
    try:
        users = load_users(path)
    except CredentialsError as exc:
        raise CliError(str(exc)) from None
    for name in sorted(users):
        print(name)
    print(f"{len(users)} user(s) in {path}", file=sys.stderr)
    return 0


def _remove_user(path: Any, name: str) -> int:
    # The file format and its atomic write (mode 0600) are service.auth's.
    from service.auth import CredentialsError, _write_atomic, load_users

    try:
        users = load_users(path) if path.exists() else {}
    except CredentialsError as exc:
        raise CliError(str(exc)) from None
    if name not in users:
        raise CliError(f"no user {name!r} in {path}")
    del users[name]
    _write_atomic(path, {"version": 1, "users": users})
    print(f"removed user {name} from {path}")
    return 0


def read_password(stdin: TextIO) -> str:
    """From a prompt on a terminal (asked twice), else the first line of stdin;
    a second line, if present, must match. Never echoed nor logged."""
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat password: "):
            raise CliError("passwords do not match")
        return first
    data = stdin.read(MAX_PASSWORD_INPUT + 1)
    if len(data) > MAX_PASSWORD_INPUT:
        raise CliError("too much input on stdin: expected the password and, optionally, its repetition")
    lines = [line.removesuffix("\r") for line in data.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if not lines or not lines[0]:
        raise CliError("no password on stdin: give it on the first line")
    if len(lines) > 2:
        raise CliError("expected one or two lines on stdin (the password and its repetition)")
    if len(lines) == 2 and lines[1] != lines[0]:
        raise CliError("passwords do not match")
    return lines[0]
