"""Operations commands: `replay-dead-letter`, `config` and `status`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from config.root import Components
from consumers.dead_letter_lines import decode_dead_letter_record
from daemon.commands import CliError, add_common, command
from streams.batches import RecordBatch
from streams.events import Reason
from streams.formats import make_parser


def add_commands(subparsers) -> None:
    replay = subparsers.add_parser(
        "replay-dead-letter", help="re-send dead-lettered records after a fix, skipping those that still fail")
    add_common(replay)
    replay.add_argument("file", help="a dead-letter NDJSON file")
    replay.add_argument("--to", required=True, help="transport URI: spool:DIR, kinesis:STREAM, sqs:QUEUE, console")
    replay.add_argument("--format", help="format of the original records (default: the config's)")
    replay.add_argument("--reason", action="append",
                        help=f"only these reasons (repeatable): {', '.join(r.value for r in Reason)}")
    replay.add_argument("--create-resources", action="store_true")


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
def cmd_replay_dead_letter(args: argparse.Namespace, root: Components) -> int:
    """Each dead letter's record is parsed again, with the original format and
    then as NDJSON (late and future letters hold the event's NDJSON form).
    Those that parse now are sent; the rest are counted as still failing. A
    record that was truncated in the dead-letter file cannot be replayed.

    An event whose dedup key its source partition has already counted (the
    raw-event archive holds it: a late event that was a re-sent duplicate) is
    not sent, nor is a second copy of one sent earlier in the same run of the
    command: sent, it would count twice. Late letters are never replayed
    without that check: with raw events off, the command refuses them."""
    settings = root.settings
    args.reason = check_reasons(args.reason)
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"dead-letter file not found: {path}")
    parsers = [make_parser(args.format or settings.format, settings.naive_timezone, settings.max_record_bytes)]
    if parsers[0].name != "ndjson":
        parsers.append(make_parser("ndjson", settings.naive_timezone, settings.max_record_bytes))
    counted = None
    if settings.raw_events.enabled:
        counted = root.counted_keys()
    elif _has_late(path, args.reason):
        raise CliError(f"{path} holds late dead letters, and raw events are not archived ([raw_events] enabled = "
                       f"false): without the archive a re-sent duplicate cannot be told from a new event, so "
                       f"replaying them could count events twice; leave them out with --reason")
    writer = root.writer(args.to, create_resources=args.create_resources)
    counts = {"replayed": 0, "still failing": 0, "skipped": 0, "already counted": 0}
    sent: set[tuple] = set()  # (source, key) of every event sent by this command
    chunk: list[tuple[str, object]] = []  # (source, event) to check and send
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                event_source = _replayable(line, number, args.reason, parsers, counts)
                if event_source is None:
                    continue
                chunk.append(event_source)
                if len(chunk) >= REPLAY_CHUNK:
                    _send_chunk(chunk, counted, sent, writer, counts)
                    chunk = []
        _send_chunk(chunk, counted, sent, writer, counts)
    finally:
        writer.close()
    print(", ".join(f"{name}: {n:,}" for name, n in counts.items()))
    return 0


REPLAY_CHUNK = 50_000  # letters checked against the archive and sent together
_EVENT_FORM = (Reason.LATE.value, Reason.FUTURE.value)  # letters that hold the event's NDJSON form


def _has_late(path: Path, reasons: list[str] | None) -> bool:
    if reasons and Reason.LATE.value not in reasons:
        return False
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if json.loads(line).get("reason") == Reason.LATE.value:
                    return True
            except (ValueError, AttributeError):
                continue
    return False


def _replayable(line: str, number: int, reasons: list[str] | None, parsers, counts: dict[str, int]):
    """(source, event) of a dead-letter line that parses now, else None (counted)."""
    try:
        entry = json.loads(line)
        record = decode_dead_letter_record(entry)
    except (ValueError, KeyError, TypeError, AttributeError):
        counts["still failing"] += 1
        return None
    if reasons and entry.get("reason") not in reasons:
        counts["skipped"] += 1
        return None
    if entry.get("truncated"):
        counts["still failing"] += 1
        return None
    if entry.get("reason") in _EVENT_FORM and len(parsers) > 1:
        parsers = parsers[::-1]  # NDJSON first: what these letters hold
    for parser in parsers:
        parsed = parser.parse_batch(RecordBatch.data("replay", [record], [number]))
        if parsed.events:
            return str(entry.get("source", "")), parsed.events[0]
    counts["still failing"] += 1
    return None


def _send_chunk(chunk: list, counted, sent: set, writer, counts: dict[str, int]) -> None:
    if not chunk:
        return
    # Counted by any partition, not only the letter's source: a letter
    # replayed before is archived under the partition that consumed it.
    already = counted.counted_events(None, [event for _, event in chunk]) if counted is not None else [False] * len(chunk)
    pending: list[bytes] = []
    for index, (source, event) in enumerate(chunk):
        key = (source, event.dedup_key)
        if already[index] or key in sent:
            counts["already counted"] += 1
            continue
        sent.add(key)
        pending.append(event.to_json_line()[:-1])
        if len(pending) >= 500:
            counts["replayed"] += writer.send(pending)
            pending = []
    if pending:
        counts["replayed"] += writer.send(pending)
