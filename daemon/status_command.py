"""`status`: what the jobs on this data directory did last, read from disk.

    rivulet status [--data-dir DIR] [--from spool:DIR|kinesis:STREAM] [--group NAME] [--json]

Shows, as far as they exist:
- the jobs (`consume`, `run`) from their status files: state, last
  checkpoint's age, and per partition the checkpointed position, watermark and
  lag (wall clock minus the newest event counted);
- with `--from spool:DIR`: each consumer group's committed offset, its
  watermark and the records still pending; with `--from kinesis:STREAM`: the
  lease table's shards, owners, checkpoints and watermarks;
- the local count store: windows per partition and the newest window.

Nothing found at all is an error (exit 2): most likely a wrong --data-dir.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from datetime import datetime, timezone
from typing import Any

from config.root import Components
from config.settings import Settings
from daemon.commands import CliError, add_common, command
from observability.status_file import process_alive, read_status_files
from streams.utc import MAX_US, MIN_US


def add_commands(subparsers: Any) -> None:
    status = subparsers.add_parser("status", help="partitions, checkpoints, watermarks and lag, read from disk")
    add_common(status)
    status.add_argument("--from", dest="source_uri", help="also read a transport: spool:DIR | kinesis:STREAM")
    status.add_argument("--group", default="default", help="consumer group (spool, kinesis)")
    status.add_argument("--json", action="store_true")


def _utc(us: int | None) -> str:
    # A partition with no watermark yet holds the counter's "before time" floor: no date to show.
    if us is None or not MIN_US <= us <= MAX_US:
        return "-"
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:,.1f} s"


def jobs(settings: Settings, now: float) -> list[dict[str, Any]]:
    found = []
    for entry in read_status_files(settings.data_dir):
        state = entry.get("state", "?")
        if state == "running" and not process_alive(int(entry.get("pid", 0) or 0)):
            state = "gone (no stop recorded: crashed or killed)"
        checkpoint = entry.get("checkpoint")
        partitions = {}
        for name, p in sorted(entry.get("partitions", {}).items()):
            newest = p.get("newest_event_us")
            partitions[name] = {
                "position": p.get("position"), "watermark": _utc(p.get("watermark_us")),
                "newest_event": _utc(newest), "lag_seconds": None if newest is None else now - newest / 1e6,
            }
        found.append({
            "command": entry.get("command"), "source": entry.get("source"), "pid": entry.get("pid"), "state": state,
            "checkpoint_age_seconds": None if checkpoint is None else now - checkpoint,
            "updated_age_seconds": None if entry.get("updated") is None else now - entry["updated"],
            "totals": entry.get("totals", {}), "partitions": partitions, "file": entry.get("file"),
        })
    return found


def spool_status(root: Components, directory: str, group: str | None) -> dict[str, Any]:
    found = root.spool_status(directory)
    if not found["found"]:
        raise CliError(f"no spool at {found['spool']}")
    groups = {grp: {"partition": g["partition"], "next_seq": g["next_seq"], "watermark": _utc(g["watermark_us"]),
                    "pending": g["pending"]}
              for grp, g in found["groups"].items()}
    return {"spool": found["spool"], "stored_records": found["stored_records"], "last_seq": found["last_seq"],
            "groups": groups, "group": group}


def kinesis_status(root: Components, stream: str, group: str) -> dict[str, Any]:
    try:
        table, leases = root.kinesis_leases(stream, group)
    except Exception as exc:  # any failure to read the table is worded for the user here
        raise CliError(f"cannot read the lease table of kinesis:{stream}: {type(exc).__name__}: {exc}") from None
    return {"lease_table": table, "shards": {
        lease.shard_id: {"owner": lease.owner, "checkpoint": lease.checkpoint, "watermark": _utc(lease.watermark_us),
                         "finished": lease.finished, "parents": list(lease.parents)}
        for lease in sorted(leases, key=lambda lease: lease.shard_id)}}


def store_status(root: Components) -> dict[str, Any] | None:
    try:
        rows = root.local_store_status()
    except sqlite3.Error as exc:
        raise CliError(f"cannot read the count store {root.settings.count_db}: {exc}") from None
    if rows is None:
        return None
    return {"count_store": str(root.settings.count_db), "partitions": {
        partition: {"windows": windows, "provisional": provisional, "newest_window": _utc(newest)}
        for partition, windows, provisional, newest in rows}}


def collect(args: argparse.Namespace, root: Components) -> dict[str, Any]:
    settings = root.settings
    now = time.time()
    report: dict[str, Any] = {"data_dir": str(settings.data_dir), "jobs": jobs(settings, now)}
    uri = getattr(args, "source_uri", None)
    if uri:
        scheme, _, target = uri.partition(":")
        if scheme == "spool" and target:
            report["transport"] = spool_status(root, target, args.group)
        elif scheme == "kinesis" and target:
            report["transport"] = kinesis_status(root, target, args.group)
        else:
            raise CliError(f"--from {uri}: status reads spool:DIR or kinesis:STREAM")
    store = store_status(root)
    if store is not None:
        report["store"] = store
    if not report["jobs"] and "transport" not in report and store is None:
        raise CliError(f"nothing to report under {settings.data_dir}: no job status, no count store "
                       f"(check --data-dir; give --from for a transport)")
    return report


def render(report: dict[str, Any]) -> str:
    lines = [f"data directory {report['data_dir']}"]
    for job in report["jobs"]:
        totals = job["totals"]
        lines.append("")
        lines.append(f"{job['command']} {job['source']} (pid {job['pid']}): {job['state']}, "
                     f"last checkpoint {_age(job['checkpoint_age_seconds'])} ago, "
                     f"updated {_age(job['updated_age_seconds'])} ago")
        if totals:
            lines.append(f"  {totals.get('read', 0):,} records read, {totals.get('valid', 0):,} counted, "
                         f"{totals.get('duplicates', 0):,} duplicates, {totals.get('dead_letters', 0):,} dead letters")
        for name, p in job["partitions"].items():
            position = "-" if p["position"] is None else f"{p['position']:,}"
            lines.append(f"  {name}: checkpoint {position}, watermark {p['watermark']}, "
                         f"newest event {p['newest_event']}, lag {_age(p['lag_seconds'])}")
    transport = report.get("transport")
    if transport and "spool" in transport:
        lines.append("")
        lines.append(f"spool {transport['spool']}: {transport['stored_records']:,} records stored, "
                     f"last seq {transport['last_seq']}")
        for grp, g in transport["groups"].items():
            lines.append(f"  group {grp}: next seq {g['next_seq']:,}, {g['pending']:,} pending, "
                         f"watermark {g['watermark']}")
    elif transport:
        lines.append("")
        lines.append(f"lease table {transport['lease_table']}: {len(transport['shards'])} shard(s)")
        for shard, s in transport["shards"].items():
            lines.append(f"  {shard}: owner {s['owner'] or '-'}, checkpoint {s['checkpoint'] or '-'}, "
                         f"watermark {s['watermark']}{', finished' if s['finished'] else ''}")
    store = report.get("store")
    if store:
        lines.append("")
        lines.append(f"count store {store['count_store']}: {len(store['partitions'])} partition(s)")
        for name, p in store["partitions"].items():
            lines.append(f"  {name}: {p['windows']:,} windows ({p['provisional']:,} provisional), "
                         f"newest window {p['newest_window']}")
    return "\n".join(lines)


@command("status")
def cmd_status(args: argparse.Namespace, root: Components) -> int:
    report = collect(args, root)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0
