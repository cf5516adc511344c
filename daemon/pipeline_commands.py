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
from pathlib import Path
from typing import Any, Callable

import inject

from config.settings import Settings
from consumers.ports import DeadLetterSink
from daemon.commands import CliError, add_common, command
from daemon.job import parser_for, run_job
from daemon.service_loop import ServiceLoop
from daemon.stop_signals import stop_on_signals
from producers.file_source import FileSource
from producers.random_source import RandomEventSource
from producers.transport import start_drain_watch


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
        from daemon.observe import metrics_server

        endless = getattr(source, "count", 0) is None
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
    from config.aws_resources import create_profile_resources
    from producers.transports import open_reader

    if args.create_resources:
        create_profile_resources(settings, args.source_uri, args.group)
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
            reader.close()  # after the final commit: Kinesis leases are handed back
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
