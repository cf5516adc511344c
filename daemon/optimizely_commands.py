"""CLI commands of the Optimizely integration.

    bucket --experiment KEY --user ID [--attr 'tier:"platinum"' ...] [--debug] [--datafile PATH|URL] [--activate]
    optimizely-forward [--from spool:DIR] [--group NAME] [--drain SECONDS]

`bucket` prints the bucketer's JSON answer (the HTTP `/bucketer` response).
`--attr` takes the same `k:v` pairs with JSON values as the HTTP `a=`
parameter (one or several pairs per `--attr`). It uses `get_variation` and
sends nothing unless `--activate` is given, in which case the impression goes
through `optimizely.dispatch_to` like the HTTP bucketer's.

`optimizely-forward` reads optimizely payload records (written by the
`BulkEventDispatcher`) from a transport and sends them to the Event API
through the bulk sink, committing only what was acknowledged.
"""

from __future__ import annotations

import argparse
import json
import threading
from typing import Any

from config.root import Components
from daemon.commands import CliError, add_common, command
from daemon.stop_signals import stop_on_signals
from producers.transport import start_drain_watch

DEFAULT_FORWARD_GROUP = "optimizely"


def add_commands(subparsers: Any) -> None:
    bucket = subparsers.add_parser("bucket", help="bucket a user into an Optimizely experiment (prints JSON)")
    add_common(bucket)
    bucket.add_argument("--experiment", required=True, help="experiment key")
    bucket.add_argument("--user", required=True, help="user id")
    bucket.add_argument(
        "--attr", action="append", default=[], metavar="K:V",
        help="""attributes as key:JSON pairs, quoted for the shell: --attr 'tier:"platinum"' --attr member_since_days:56 (repeatable)""",
    )
    bucket.add_argument("--debug", action="store_true", help="add project, account, time, datafile and attributes")
    bucket.add_argument("--datafile", help="datafile path or URL (default: optimizely.datafile, OPTIMIZELY_DATAFILE, sdk_key)")
    bucket.add_argument("--activate", action="store_true", help="send the impression (via optimizely.dispatch_to)")

    forward = subparsers.add_parser("optimizely-forward", help="send SDK payloads from a transport to the Optimizely Event API")
    add_common(forward)
    forward.add_argument("--from", dest="source_uri", help="transport URI (default: optimizely.dispatch_to, else spool:<data_dir>/optimizely-spool)")
    forward.add_argument("--group", default=DEFAULT_FORWARD_GROUP, help="consumer group (spool)")
    forward.add_argument("--drain", type=float, help="exit once caught up for this many seconds")
    forward.add_argument("--create-resources", action="store_true")


@command("bucket")
def cmd_bucket(args: argparse.Namespace, root: Components) -> int:
    from optimizely_integration.attributes import AttributeParseError, parse_attribute_args
    from optimizely_integration.bucketer import BucketerError
    from optimizely_integration.datafile import DatafileError, resolve_source

    try:
        attributes = parse_attribute_args(args.attr)
    except AttributeParseError as exc:
        raise CliError(f"--attr: {exc}") from None
    # An explicit --datafile wins over OPTIMIZELY_DATAFILE and the config.
    source = resolve_source(args.datafile, environ={}) if args.datafile else None
    try:
        parts = root.bucketer(activate=args.activate, source=source, start_refresh=False)
    except DatafileError as exc:
        raise CliError(str(exc)) from None
    try:
        result = parts.bucketer.variation(args.experiment, args.user, attributes)
    except BucketerError as exc:
        raise CliError(f"{exc.code}: {exc.reason}") from None
    finally:
        parts.close()
    print(json.dumps(result.to_response(args.debug)))
    return 0


@command("optimizely-forward")
def cmd_forward(args: argparse.Namespace, root: Components) -> int:
    from optimizely_integration.forwarder import PayloadForwarder
    from config.optimizely_settings import optimizely_settings

    settings = root.settings
    opt = optimizely_settings(settings)
    reader = root.reader(args.source_uri or opt.dispatch_uri(settings.data_dir), group=args.group,
                         create_resources=args.create_resources)
    dead_letters = root.dead_letters()
    sink = root.optimizely_bulk_sink()
    forwarder = PayloadForwarder(reader, sink, commit_interval=settings.checkpoint_interval)
    stop = start_drain_watch(reader, args.drain) if args.drain is not None else threading.Event()
    try:
        with stop_on_signals(reader.stop, settings):
            forwarder.run()
    finally:
        stop.set()
        sink.close()
        dead_letters.flush()
        reader.close()
    s = sink.stats
    print(json.dumps({
        "records": forwarder.records, "visitors_sent": s.visitors_sent, "events_sent": s.events_sent,
        "requests": s.batches_sent, "bytes": s.bytes_sent, "dead_lettered": s.visitors_dead_lettered,
        "dropped": s.visitors_dropped, "unacknowledged": sink.outstanding,
    }))
    return 0
