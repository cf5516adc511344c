"""The command line: `run`, `produce`, `consume`, `query buckets`, `export`.

Every command reports a bad argument, config or input file in one line on
stderr and exits non-zero; bad records never stop a command (they are
dead-lettered).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

import inject

from config.bindings import configure
from config.settings import ConfigError, Settings, check_log_level, load_settings
from consumers.bucket_query import query_buckets
from consumers.ports import CountStore, DeadLetterSink
from consumers.retrying_ports import STOP_REQUESTED
from daemon.job import parser_for, run_job
from producers.transport import start_drain_watch
from daemon.reload import install_sighup_handler, on_reload
from daemon.service_loop import ServiceLoop
from producers.file_source import FileSource
from producers.random_source import RandomEventSource
from streams.events import format_utc_seconds
from streams.parsers import PARSERS
from streams.timestamps import parse_duration, parse_timestamp_us

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_SAMPLE = PROJECT_ROOT / "samples" / "events_sample.csv"
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace, Settings], int]
COMMANDS: dict[str, Handler] = {}


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def command(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = handler
        return handler

    return register


# -- argument parsing -----------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML profile (default config/local.toml)")
    p.add_argument("--data-dir", help="where local stores live (overrides pipeline.data_dir)")


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", help="input file (gzip is detected)")
    p.add_argument("--source", choices=["file", "random"], default=None, help="random replaces --input")
    p.add_argument("--count", type=int, help="random: number of events (default endless)")
    p.add_argument("--rate", type=float, help="random: events per second")
    p.add_argument("--seed", type=int, default=1, help="random: seed")
    p.add_argument("--format", help="events-csv | gdelt-tsv | ndjson")
    p.add_argument("--lateness", help="allowed lateness, e.g. 10m, 3h")


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

    run = sub.add_parser("run", help="process a finite input, flush every window, print the summary")
    _common(run)
    _source_args(run)
    run.add_argument("--processes", type=int, default=1, choices=[1, 2], help="2: producer and consumer processes")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port while running")
    run.add_argument("--metrics-host", default="127.0.0.1", help="address of --metrics-port (default 127.0.0.1)")

    produce = sub.add_parser("produce", help="parse an input and send its events to a transport")
    _common(produce)
    _source_args(produce)
    produce.add_argument("--to", required=True, help="spool:DIR | console | kinesis:STREAM | sqs:QUEUE")
    produce.add_argument("--create-resources", action="store_true")

    consume = sub.add_parser("consume", help="the long-running daemon: count what a transport delivers")
    _common(consume)
    consume.add_argument("--from", dest="source_uri", required=True, help="spool:DIR | kinesis:STREAM | sqs:QUEUE")
    consume.add_argument("--drain", type=float, help="exit once caught up for this many seconds")
    consume.add_argument("--lateness", help="allowed lateness, e.g. 10m")
    consume.add_argument("--group", default="default", help="consumer group (spool)")
    consume.add_argument("--create-resources", action="store_true")
    consume.add_argument("--json", action="store_true")

    query = sub.add_parser("query", help="read counts")
    qsub = query.add_subparsers(dest="query_command", required=True)
    buckets = qsub.add_parser("buckets", help="hourly counts of one customer")
    _common(buckets)
    buckets.add_argument("--customer", required=True)
    buckets.add_argument("--start", required=True)
    buckets.add_argument("--end", required=True)
    buckets.add_argument("--plot", help="also draw the buckets to FILE.svg or FILE.png")

    export = sub.add_parser("export", help="every written window of a rollup as CSV")
    _common(export)
    export.add_argument("--rollup", required=True)

    for module in _plugin_modules():
        module.add_commands(sub, _common)
    return parser


# Commands of other capabilities (HTTP, Optimizely, operations) live in their
# own modules; each has `add_commands(subparsers, add_common)` and registers
# its handlers with `@command(name)`.
PLUGIN_MODULES = ("daemon.http_commands", "daemon.optimizely_commands", "daemon.ops_commands")


def _plugin_modules():
    import importlib

    for name in PLUGIN_MODULES:
        try:
            yield importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def load_for(args: argparse.Namespace) -> Settings:
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
    settings = settings.with_overrides(**changes)
    configure(settings)
    return settings


# -- commands -------------------------------------------------------------------


def _make_source(args: argparse.Namespace, settings: Settings):
    if args.source == "random" or (args.source is None and args.input is None and args.count is not None):
        return RandomEventSource(seed=args.seed, count=args.count, rate=args.rate, batch_size=settings.batch_size), "ndjson"
    if not args.input:
        raise CliError("give --input PATH or --source random [--count N]")
    path = Path(args.input)
    if path.is_dir():
        raise CliError(f"--input is a directory, not a file: {path}")
    if not path.exists():
        raise CliError(f"input file not found: {path}")
    if not path.is_file():
        raise CliError(f"--input is not a regular file: {path}")
    return FileSource(path, settings.batch_size), None


def _raise_damage(source: object) -> None:
    """A damaged compressed input: its complete records were processed and
    the summary printed; the command still fails (exit 2), naming the byte."""
    damage = getattr(source, "damage", None)
    if damage:
        raise CliError(damage)


def _print_summary(summary, settings: Settings, as_json: bool) -> None:
    _check_late(summary, settings)
    if as_json:
        print(json.dumps(summary.as_dict()))
    else:
        print(summary.render(settings.lateness, str(settings.dead_letter_path)))


def _check_late(summary, settings: Settings) -> None:
    """After the final sync: which late events were re-sent duplicates of
    events already counted, against the raw-event archive (consumers/counted_keys.py)."""
    if not summary.late or summary.late_duplicates is not None:
        return
    if not settings.raw_events.enabled:
        summary.late_unchecked = "raw events are not archived, [raw_events] enabled = false"
        return
    from consumers.counted_keys import CountedKeys
    from consumers.ports import ObjectStore

    try:
        summary.check_late(CountedKeys(inject.instance(ObjectStore)), settings.lateness)
    except Exception as exc:  # the counts are written; only the advice is missing
        logging.getLogger("rivulet").warning("could not check late events against the raw-event archive: %s", exc)
        summary.late_unchecked = f"the raw-event archive could not be read ({type(exc).__name__})"


@command("run")
def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    source, forced_format = _make_source(args, settings)
    parser = parser_for(settings, forced_format)
    if args.processes == 2:
        from daemon.two_process import run_two_processes

        summary = run_two_processes(settings, source, parser)
    else:
        from daemon.http_commands import embedded_http  # [http] enabled: serve while an endless run runs

        endless = getattr(source, "count", 0) is None
        from daemon.observe import metrics_server

        with ServiceLoop("run") as service, stop_on_signals(source.stop, settings, service), \
                embedded_http(settings, endless=endless), metrics_server(args.metrics_host, args.metrics_port):
            summary = run_job(settings, source.observable(), parser, on_ready=service.ready if endless else None,
                              unbounded=endless, sinks_thread=not endless, name="run",
                              source_name=_source_name(args, source),
                              input_file=args.input if isinstance(source, FileSource) else None)
    _print_summary(summary, settings, args.json)
    _raise_damage(source)
    return 0


@command("produce")
def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from daemon.produce import produce

    source, forced_format = _make_source(args, settings)
    parser = parser_for(settings, forced_format)
    with stop_on_signals(source.stop):
        sent, dead = produce(
            source.observable(), parser, args.to, inject.instance(DeadLetterSink), settings, args.create_resources
        )
    print(f"sent {sent:,} events to {args.to}; {dead:,} dead-lettered to {settings.dead_letter_path}")
    _raise_damage(source)
    return 0


@command("consume")
def cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    from producers.transports import open_reader

    reader = open_reader(
        args.source_uri, group=args.group, batch_size=settings.batch_size, poll_interval=settings.idle_poll_interval,
        settings=settings, create_resources=args.create_resources,
    )
    stop = start_drain_watch(reader, args.drain) if args.drain is not None else threading.Event()
    from daemon.http_commands import embedded_http  # [http] enabled: serve while consuming

    with ServiceLoop("consume") as service, stop_on_signals(reader.stop, settings, service), \
            embedded_http(settings, source=reader):
        try:
            summary = run_job(settings, reader.batches(), parser_for(settings, "ndjson"), commit=reader.commit,
                              on_ready=lambda: service.ready(args.source_uri), unbounded=True, name="consume",
                              source_name=args.source_uri, queue_depth=_queue_depth(reader))
        finally:
            stop.set()
    _print_summary(summary, settings, args.json)
    return 0


def _source_name(args: argparse.Namespace, source: object) -> str:
    if isinstance(source, FileSource):
        return f"file:{args.input}"
    return f"random (seed {args.seed}, count {'endless' if args.count is None else args.count})"


def _queue_depth(reader: object) -> Callable[[], int] | None:
    """Batches waiting in a reader's queue (Kinesis pollers), if it has one."""
    depth = getattr(reader, "queue_depth", None)
    if callable(depth):
        return depth
    queue = getattr(reader, "_queue", None)
    return queue.qsize if queue is not None and hasattr(queue, "qsize") else None


def require_store(settings: Settings) -> None:
    """A query of a store that does not exist is a user error (a wrong
    --data-dir, a typo), not an empty answer."""
    if settings.backend == "local" and not settings.count_db.is_file():
        raise CliError(f"no count store at {settings.count_db}: check --data-dir / pipeline.data_dir "
                       f"(a store is created by run or consume)")


class _ExistingStore:
    """The bound count store, checked to exist on first use (so that argument
    errors are reported first)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __getattr__(self, name: str):
        require_store(self.settings)
        return getattr(inject.instance(CountStore), name)


@command("query")
def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    try:
        start_us = parse_timestamp_us(args.start, settings.naive_timezone)
        end_us = parse_timestamp_us(args.end, settings.naive_timezone)
    except ValueError as exc:
        raise CliError(f"bad timestamp: {exc}") from None
    result = query_buckets(_ExistingStore(settings), settings.rollup(settings.query_rollup), settings.query_max_range,
                           args.customer, start_us, end_us)
    print(json.dumps(result))
    if args.plot:
        from consumers.bucket_chart import write_chart

        write_chart(result, args.plot, start_us, end_us)
    return 0


@command("export")
def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    spec = settings.rollup(args.rollup)
    require_store(settings)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["window_start", *spec.key_fields, "count"])
    for start, key, count in inject.instance(CountStore).export(spec.name):
        writer.writerow([format_utc_seconds(start), *key, count])
    return 0


# -- plumbing -------------------------------------------------------------------


class stop_on_signals:
    """SIGTERM/SIGINT stop intake; the pipeline then drains, flushes and
    checkpoints every sink and the command exits 0. If that takes longer than
    `pipeline.stop_timeout`, the process exits 1 without a checkpoint: the
    source replays from the last one. SIGHUP reloads (daemon/reload.py)."""

    def __init__(self, stop: Callable[[], None], settings: Settings | None = None, service=None) -> None:
        self.stop = stop
        self.timeout = settings.stop_timeout.total_seconds() if settings else 30.0
        self.service = service
        self.previous: dict[int, object] = {}

    def _on_signal(self, signum: int, frame: object) -> None:
        STOP_REQUESTED.set()
        if self.service is not None:
            self.service.stopping()
        self.stop()
        timer = threading.Timer(self.timeout, self._give_up, args=(signum,))
        timer.daemon = True
        timer.start()

    def _give_up(self, signum: int) -> None:
        logging.getLogger("rivulet").error(
            "did not stop within pipeline.stop_timeout (%ss) after signal %s; exiting without a final checkpoint",
            self.timeout, signum)
        os._exit(1)

    def __enter__(self) -> "stop_on_signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._on_signal)
            self.previous[signal.SIGHUP] = signal.getsignal(signal.SIGHUP)
            install_sighup_handler()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


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
        settings = load_for(args)
        configured_level = settings.logging.level
        if configured_level and args.log_level == "WARNING":
            logging.getLogger().setLevel(configured_level)
        on_reload("log level", lambda: _reload_log_level(args))
        return COMMANDS[args.command](args, settings)
    except BrokenPipeError:  # `... | head`: the reader has all it wanted (an OSError: caught first)
        _quiet_stdout()
        return 0
    except (CliError, ConfigError, ValueError, KeyError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        _error_line(str(message))
        return EXIT_USAGE
    except Exception as exc:  # a bug: still one line; the traceback at DEBUG
        logging.getLogger("rivulet").debug("unexpected error", exc_info=True)
        _error_line(f"unexpected {type(exc).__name__}: {exc} (--log-level DEBUG shows where)")
        return 1
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
