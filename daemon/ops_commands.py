"""Operations commands: `replay-dead-letter`, `config` and `status`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from config.settings import Settings
from consumers.dead_letter_file import decode_dead_letter_record
from daemon.cli import CliError, command
from producers.transports import open_writer
from streams.events import Reason, RecordBatch
from streams.parsers import make_parser


def add_commands(subparsers, add_common) -> None:
    replay = subparsers.add_parser(
        "replay-dead-letter", help="re-send dead-lettered records after a fix, skipping those that still fail")
    add_common(replay)
    replay.add_argument("file", help="a dead-letter NDJSON file")
    replay.add_argument("--to", required=True, help="transport URI: spool:DIR, kinesis:STREAM, sqs:QUEUE, console")
    replay.add_argument("--format", help="format of the original records (default: the config's)")
    replay.add_argument("--reason", action="append",
                        help=f"only these reasons (repeatable): {', '.join(r.value for r in Reason)}")
    replay.add_argument("--create-resources", action="store_true")

    from daemon import config_command, status_command

    config_command.add_commands(subparsers, add_common)
    status_command.add_commands(subparsers, add_common)


def check_reasons(given: list[str] | None) -> list[str] | None:
    """The dead-letter reasons named (case and `_` for space forgiven), or CliError."""
    if not given:
        return given
    def plain(text: str) -> str:
        return text.strip().lower().replace("_", " ").replace("-", " ")

    known = {plain(r.value): r.value for r in Reason}
    reasons = []
    for name in given:
        value = known.get(plain(name))
        if value is None:
            raise CliError(f"--reason {name!r}: unknown reason, expected one of {', '.join(r.value for r in Reason)}")
        reasons.append(value)
    return reasons


@command("replay-dead-letter")
def cmd_replay_dead_letter(args: argparse.Namespace, settings: Settings) -> int:
    """Each dead letter's record is parsed again, with the original format and
    then as NDJSON (late and future letters hold the event's NDJSON form).
    Those that parse now are sent; the rest are counted as still failing. A
    record that was truncated in the dead-letter file cannot be replayed."""
    args.reason = check_reasons(args.reason)
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"dead-letter file not found: {path}")
    parsers = [make_parser(args.format or settings.format, settings.naive_timezone, settings.max_record_bytes)]
    if parsers[0].name != "ndjson":
        parsers.append(make_parser("ndjson", settings.naive_timezone, settings.max_record_bytes))
    writer = open_writer(args.to, settings=settings, create_resources=args.create_resources)
    counts = {"replayed": 0, "still failing": 0, "skipped": 0}
    pending: list[bytes] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                entry = json.loads(line)
                record = decode_dead_letter_record(entry)
            except (ValueError, KeyError, TypeError):
                counts["still failing"] += 1
                continue
            if args.reason and entry.get("reason") not in args.reason:
                counts["skipped"] += 1
                continue
            if entry.get("truncated"):
                counts["still failing"] += 1
                continue
            event = None
            for parser in parsers:
                parsed = parser.parse_batch(RecordBatch.data("replay", [record], [number]))
                if parsed.events:
                    event = parsed.events[0]
                    break
            if event is None:
                counts["still failing"] += 1
                continue
            pending.append(event.to_json_line()[:-1])
            if len(pending) >= 500:
                counts["replayed"] += writer.send(pending)
                pending = []
    if pending:
        counts["replayed"] += writer.send(pending)
    writer.close()
    print(", ".join(f"{name}: {n:,}" for name, n in counts.items()))
    return 0
