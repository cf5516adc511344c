"""The pipeline commands: `run` (a finite input, or an endless random one),
`produce` (parse an input, send its events to a transport) and `consume`
(the long-running daemon: count what a transport delivers).

    rivulet run --input FILE [--format F] [--processes 2] [--json] [--metrics-port N]
    rivulet produce --input FILE --to spool:DIR|console|kinesis:STREAM|sqs:QUEUE
    rivulet consume --from spool:DIR|kinesis:STREAM|sqs:QUEUE [--drain SECONDS]
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.root import Components
from daemon.commands import CliError, add_common, command
from daemon.job import parser_for, run_job
from daemon.service_loop import ServiceLoop
from daemon.stop_signals import stop_on_signals
from producers.transport import Source, queue_depth_of, start_drain_watch


def add_commands(sub: Any) -> None:
    run = sub.add_parser("run", help="process a finite input, flush every window, print the summary")
    add_common(run)
    _source_args(run)
    run.add_argument("--processes", type=int, default=1, choices=[1, 2], help="2: producer and consumer processes")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port while running")
    run.add_argument("--metrics-host", default="127.0.0.1", help="address of --metrics-port (default 127.0.0.1)")

    produce = sub.add_parser("produce", help="parse an input and send its events to a transport")
    add_common(produce)
    _source_args(produce)
    produce.add_argument("--to", required=True, help="spool:DIR | console | kinesis:STREAM | sqs:QUEUE")
    produce.add_argument("--create-resources", action="store_true")

    consume = sub.add_parser("consume", help="the long-running daemon: count what a transport delivers")
    add_common(consume)
    consume.add_argument("--from", dest="source_uri", required=True, help="spool:DIR | kinesis:STREAM | sqs:QUEUE")
    consume.add_argument("--drain", type=float, help="exit once caught up for this many seconds")
    consume.add_argument("--lateness", help="allowed lateness, e.g. 10m")
    consume.add_argument("--group", default="default", help="consumer group (spool)")
    consume.add_argument("--create-resources", action="store_true")
    consume.add_argument("--json", action="store_true")


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", help="input file (gzip is detected)")
    p.add_argument("--source", choices=["file", "random"], default=None, help="random replaces --input")
    p.add_argument("--count", type=int, help="random: number of events (default endless)")
    p.add_argument("--rate", type=float, help="random: events per second")
    p.add_argument("--seed", type=int, default=1, help="random: seed")
    p.add_argument("--format", help="events-csv | gdelt-tsv | ndjson")
    p.add_argument("--lateness", help="allowed lateness, e.g. 10m, 3h")


@dataclass(frozen=True)
class _Input:
    """The source a `run` or `produce` reads, as the command line chose it."""

    source: Source
    name: str  # for the logs and the status file
    format: str | None  # forced: random events are NDJSON whatever the profile says
    file: str | None  # a file's path, for the progress bar


def _make_source(args: argparse.Namespace, root: Components) -> _Input:
    if args.source == "random" or (args.source is None and args.input is None and args.count is not None):
        name = f"random (seed {args.seed}, count {'endless' if args.count is None else args.count})"
        return _Input(root.random_source(args.seed, args.count, args.rate), name, "ndjson", None)
    if not args.input:
        raise CliError("give --input PATH or --source random [--count N]")
    path = Path(args.input)
    if path.is_dir():
        raise CliError(f"--input is a directory, not a file: {path}")
    if not path.exists():
        raise CliError(f"input file not found: {path}")
    if not path.is_file():
        raise CliError(f"--input is not a regular file: {path}")
    return _Input(root.file_source(path), f"file:{args.input}", None, args.input)


def _raise_damage(source: Source) -> None:
    """A damaged compressed input: its complete records were processed and
    the summary printed; the command still fails (exit 2), naming the byte."""
    if source.damage:
        raise CliError(source.damage)


def _print_summary(summary, root: Components, as_json: bool) -> None:
    settings = root.settings
    _check_late(summary, root)
    if as_json:
        print(json.dumps(summary.as_dict()))
    else:
        print(summary.render(settings.lateness, str(settings.dead_letter_path)))


def _check_late(summary, root: Components) -> None:
    """After the final sync: which late events were re-sent duplicates of
    events already counted, against the raw-event archive (consumers/counted_keys.py)."""
    if not summary.late or summary.late_duplicates is not None:
        return
    settings = root.settings
    if not settings.raw_events.enabled:
        summary.late_unchecked = "raw events are not archived, [raw_events] enabled = false"
        return
    try:
        summary.check_late(root.counted_keys(), settings.lateness)
    except Exception as exc:  # the counts are written; only the advice is missing
        logging.getLogger("rivulet").warning("could not check late events against the raw-event archive: %s", exc)
        summary.late_unchecked = f"the raw-event archive could not be read ({type(exc).__name__})"


@command("run")
def cmd_run(args: argparse.Namespace, root: Components) -> int:
    settings = root.settings
    given = _make_source(args, root)
    source = given.source
    parser = parser_for(settings, given.format)
    if args.processes == 2:
        from daemon.two_process import run_two_processes

        summary = run_two_processes(settings, source, parser, root.sinks)
    else:
        from daemon.http_commands import embedded_http  # [http] enabled: serve while an endless run runs
        from daemon.observe import metrics_server

        endless = not source.bounded
        with ServiceLoop("run") as service, stop_on_signals(source.stop, settings, service), \
                embedded_http(root, endless=endless), metrics_server(args.metrics_host, args.metrics_port):
            summary = run_job(settings, source.batches(), parser, root.sinks(),
                              on_ready=service.ready if endless else None, unbounded=endless,
                              sinks_thread=not endless, name="run", source_name=given.name, input_file=given.file)
    _print_summary(summary, root, args.json)
    _raise_damage(source)
    return 0


@command("produce")
def cmd_produce(args: argparse.Namespace, root: Components) -> int:
    from daemon.produce import produce

    settings = root.settings
    given = _make_source(args, root)
    parser = parser_for(settings, given.format)
    writer = root.writer(args.to, create_resources=args.create_resources)
    with stop_on_signals(given.source.stop):
        sent, dead = produce(given.source.batches(), parser, writer, root.dead_letters())
    print(f"sent {sent:,} events to {args.to}; {dead:,} dead-lettered to {settings.dead_letter_path}")
    _raise_damage(given.source)
    return 0


@command("consume")
def cmd_consume(args: argparse.Namespace, root: Components) -> int:
    from daemon.http_commands import embedded_http  # [http] enabled: serve while consuming

    settings = root.settings
    reader = root.reader(args.source_uri, group=args.group, create_resources=args.create_resources)
    stop = start_drain_watch(reader, args.drain) if args.drain is not None else threading.Event()
    with ServiceLoop("consume") as service, stop_on_signals(reader.stop, settings, service), \
            embedded_http(root, source=reader):
        try:
            summary = run_job(settings, reader.batches(), parser_for(settings, "ndjson"), root.sinks(),
                              commit=reader.commit, on_ready=lambda: service.ready(args.source_uri), unbounded=True,
                              name="consume", source_name=args.source_uri, queue_depth=queue_depth_of(reader))
        finally:
            stop.set()
            reader.close()  # after the final commit: Kinesis leases are handed back
    _print_summary(summary, root, args.json)
    return 0
