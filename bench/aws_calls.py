#!/usr/bin/env python3
"""AWS requests per 1M events, on a dense and a sparse workload: Rivulet
against a per-event design, both against a moto server this script starts.

    python bench/aws_calls.py                                   # both workloads, 100k rows each
    python bench/aws_calls.py --workload sparse --rows 1000000  # the issue's reference shape
    python bench/aws_calls.py --rows 20000 --sample 500

Workloads (bench/generate_events.py):

  dense   200 customers, one event every 4 ms (~0.9M events an hour): many
          events per (customer, hour) window;
  sparse  `--shape sparse`: 10,000 Zipf-skewed customers over 30 days, so most
          (customer, hour) windows hold one or two events. The generator
          spreads any number of rows over the 30 days, so the bench takes the
          first `--rows` rows of a `--sparse-density` (1M) row file: the
          figures per 1M events are those of that density.

Rivulet side: `produce --to kinesis:S --create-resources`, then `consume
--from kinesis:S --drain D` with `config/aws.toml` (every rollup in it, raw
events and aggregates to S3, counts to DynamoDB), both in this process,
counting every request of every boto3 client through botocore's
`before-call.*.*` event (and the items of every BatchWriteItem). moto runs in
its own process, so the wall times are those of a consumer and a server on
separate cores; the CPU seconds of both are printed too (a shared machine
makes wall times noisy, CPU seconds less so).

Per-event side: the design Rivulet replaces, one request per event and
service: PutRecord to Kinesis, UpdateItem ADD on the (customer, hour)
counter, and a PutObject per raw event, measured on a `--sample` of the same
events and scaled to 1M.

It also lists the bucket and prints the most objects written for one
(table, hour, partition): raw events and each rollup's aggregates are one
table each (the "rollup family" of the issue's target of at most 2 on the
sparse workload). On the dense one an hour of events spans many checkpoints,
and each checkpoint's flush writes an object per open (table, hour,
partition), so the figure there is the number of flushes an hour spans.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WRITE_OPERATIONS = {"UpdateItem", "PutItem", "BatchWriteItem", "DeleteItem", "TransactWriteItems"}
S3_PUTS = {"PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload"}
DDB_TARGET = 50_000  # DynamoDB requests per 1M sparse events
DDB_FEWER = 20  # at least this many times fewer than per event
S3_TARGET = 2  # PUTs per (table, hour, partition)

_MOTO = """
import logging, sys, time
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()  # until the bench closes the pipe
"""


class RequestCounter:
    """Counts requests by (service, operation), PutRecords sizes and
    BatchWriteItem items."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.put_records_sizes: list[int] = []
        self.items: Counter = Counter()  # PutRequest / DeleteRequest
        self._lock = threading.Lock()

    def attach(self, client) -> None:
        client.meta.events.register("before-call.*.*", self._on_call)
        client.meta.events.register("provide-client-params.kinesis.PutRecords", self._on_put_records)
        client.meta.events.register("provide-client-params.dynamodb.BatchWriteItem", self._on_batch_write)

    def _on_call(self, model, **_) -> None:
        with self._lock:
            self.calls[(model.service_model.endpoint_prefix, model.name)] += 1

    def _on_put_records(self, params, **_) -> None:
        with self._lock:
            self.put_records_sizes.append(len(params["Records"]))

    def _on_batch_write(self, params, **_) -> None:
        with self._lock:
            for entries in params["RequestItems"].values():
                for entry in entries:
                    self.items[next(iter(entry))] += 1

    def service(self, name: str, operations: set[str] | None = None) -> int:
        return sum(n for (s, op), n in self.calls.items() if s == name and (operations is None or op in operations))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> subprocess.Popen:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _MOTO, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Phase:
    """Wall and CPU seconds of this process and of the moto server."""

    def __init__(self, moto_pid: int) -> None:
        self.moto_pid = moto_pid

    def __enter__(self) -> "Phase":
        self.wall0, self.cpu0, self.moto0 = time.monotonic(), time.process_time(), cpu_seconds(self.moto_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        self.moto = cpu_seconds(self.moto_pid) - self.moto0


def run_rivulet(input_path: Path, work: Path, counter: RequestCounter, shards: int, drain: float, moto_pid: int) -> dict:
    from daemon.cli import main as cli
    from aws.clients import observe_new_clients

    tag = uuid.uuid4().hex[:8]
    bucket = f"bench-{tag}"
    os.environ.update(
        RIVULET__AWS__BUCKET=bucket, RIVULET__AWS__COUNT_TABLE=f"bench-counts-{tag}",
        RIVULET__AWS__CHECKPOINT_TABLE=f"bench-leases-{tag}", RIVULET__AWS__SHARD_COUNT=str(shards),
    )
    common = ["--config", str(ROOT / "config" / "aws.toml"), "--data-dir", str(work)]
    stream = f"kinesis:bench-{tag}"
    stop = observe_new_clients(counter.attach)
    try:
        with Phase(moto_pid) as produce:
            if cli(["produce", "--input", str(input_path), "--to", stream, "--create-resources", *common]) != 0:
                raise SystemExit("produce failed")
        sent = sum(counter.put_records_sizes)
        with Phase(moto_pid) as consume:
            if cli(["consume", "--from", stream, "--drain", str(drain), "--json", *common]) != 0:
                raise SystemExit("consume failed")
    finally:
        stop()
    return {"produce": produce, "consume": consume, "sent": sent, "bucket": bucket}


def objects_per_table_hour_partition(bucket: str) -> Counter:
    """Objects per (table, dt, hour, partition) in the bucket."""
    from aws.clients import aws_client
    from aws.settings import AwsConfig

    s3 = aws_client("s3", AwsConfig())
    shape = re.compile(r"^(?P<table>.+)/dt=(?P<dt>[^/]+)/hour=(?P<hour>\d+)/part-(?P<rest>.+)$")
    out: Counter = Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            m = shape.match(item["Key"])
            if m is None:
                continue
            rest = m["rest"]
            # part-<partition>-<first position>.parquet | part-<partition>-<window><f|p>-<digest>.parquet
            partition = rest.rsplit("-", 2)[0] if m["table"].startswith("aggregates/") else rest.rsplit("-", 1)[0]
            out[(m["table"], m["dt"], m["hour"], partition)] += 1
    return out


def run_per_event(lines: list[str], counter: RequestCounter, shards: int) -> float:
    """One PutRecord, one UpdateItem ADD and one PutObject per event."""
    from aws.clients import aws_client
    from aws.resources import ensure_bucket, ensure_stream, ensure_table
    from aws.settings import AwsConfig
    from streams.timestamps import parse_timestamp_us
    from streams.utc import format_utc
    from streams.windowing import HOURLY

    config = AwsConfig()
    tag = uuid.uuid4().hex[:8]
    kinesis, dynamodb, s3 = aws_client("kinesis", config), aws_client("dynamodb", config), aws_client("s3", config)
    stream, table, bucket = f"per-event-{tag}", f"per-event-counts-{tag}", f"per-event-{tag}"
    ensure_stream(kinesis, stream, True, shards)
    ensure_table(dynamodb, table, True, "pk", "sk")
    ensure_bucket(s3, bucket, True)
    for client in (kinesis, dynamodb, s3):
        counter.attach(client)
    started = time.monotonic()
    for number, line in enumerate(lines):
        fields = line.split(",")
        if len(fields) != 4:
            continue
        customer, event_type, txn, stamp = fields
        try:
            t = parse_timestamp_us(stamp)
        except ValueError:
            continue
        kinesis.put_record(StreamName=stream, PartitionKey=customer, Data=line.encode())
        dynamodb.update_item(
            TableName=table,
            Key={"pk": {"S": customer}, "sk": {"S": format_utc(HOURLY.start_of(t))}},
            UpdateExpression="ADD #c :one",
            ExpressionAttributeNames={"#c": "count"},
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
        s3.put_object(Bucket=bucket, Key=f"events/{format_utc(t)[:13]}/{number:012d}.json", Body=line.encode())
    return time.monotonic() - started


def workload_lines(name: str, rows: int, seed: int | None, sparse_density: int) -> list[str]:
    """The first `rows` rows of the workload. The sparse generator spreads
    its rows over 30 days whatever their number (a larger file is denser),
    so the sparse rows are the first `rows` of a `sparse_density`-row file:
    figures per 1M events then hold for that density, not for a thinner file."""
    from bench.generate_events import generate, generate_sparse

    if name == "sparse":
        return list(itertools.islice(generate_sparse(max(rows, sparse_density), 42 if seed is None else seed), rows))
    return list(generate(rows, 7 if seed is None else seed, customers=200, step_ms=4))


def measure(name: str, args: argparse.Namespace, moto: subprocess.Popen, work: Path) -> dict:
    lines = workload_lines(name, args.rows, args.seed, args.sparse_density)
    input_path = work / f"{name}.csv"
    input_path.write_text("\n".join(lines) + "\n")
    ours = RequestCounter()
    result = run_rivulet(input_path, work / f"data-{name}", ours, args.shards, args.drain, moto.pid)
    objects = objects_per_table_hour_partition(result["bucket"])
    theirs = RequestCounter()
    per_event_s = run_per_event(lines[: args.sample], theirs, args.shards)
    return {"ours": ours, "theirs": theirs, "objects": objects, "per_event_s": per_event_s, **result}


def report(name: str, args: argparse.Namespace, m: dict) -> list[tuple[str, bool]]:
    ours, theirs = m["ours"], m["theirs"]
    events = m["sent"]
    sampled = theirs.calls[("kinesis", "PutRecord")]
    per_m, base = 1_000_000 / events, 1_000_000 / sampled
    produce, consume = m["produce"], m["consume"]

    shape = (f"the first {args.rows:,} rows of {max(args.rows, args.sparse_density):,} over 30 days" if name == "sparse"
             else f"{args.rows:,} rows")
    print(f"\n== {name}: {shape}, {events:,} valid events sent, {args.shards} shards, config/aws.toml")
    print(f"rivulet against moto: produce {produce.wall:.1f} s wall ({produce.cpu:.1f} s CPU here, {produce.moto:.1f} s moto), "
          f"consume --drain {args.drain:g} {consume.wall:.1f} s wall ({consume.cpu:.1f} s CPU here, {consume.moto:.1f} s moto), "
          f"{events / consume.wall:,.0f} events/s consumed")
    print(f"per-event sample: {sampled:,} events in {m['per_event_s']:.1f} s wall\n")
    print(f"{'service':<10} {'operation':<28} {'rivulet':>10} {'per 1M events':>14}")
    for (service, op), n in sorted(ours.calls.items()):
        print(f"{service:<10} {op:<28} {n:>10,} {n * per_m:>14,.0f}")

    ddb_requests = ours.service("dynamodb")
    ddb_counts = ours.calls[("dynamodb", "BatchWriteItem")]
    ddb_items = ours.items["PutRequest"] + ours.items["DeleteRequest"]
    rows = [
        ("dynamodb requests (all)", ddb_requests * per_m, theirs.service("dynamodb") * base),
        ("  count writes (BatchWriteItem)", ddb_counts * per_m, theirs.service("dynamodb", WRITE_OPERATIONS) * base),
        ("  items written (puts+deletes)", ddb_items * per_m, theirs.service("dynamodb", WRITE_OPERATIONS) * base),
        ("  of them deletions", ours.items["DeleteRequest"] * per_m, 0.0),
        ("s3 PUTs", ours.service("s3", S3_PUTS) * per_m, theirs.service("s3", S3_PUTS) * base),
        ("kinesis calls (all)", ours.service("kinesis") * per_m, theirs.service("kinesis") * base),
        ("  PutRecords / PutRecord", ours.calls[("kinesis", "PutRecords")] * per_m, theirs.calls[("kinesis", "PutRecord")] * base),
        ("  GetRecords", ours.calls[("kinesis", "GetRecords")] * per_m, 0.0),
    ]
    print(f"\n{'per 1M events':<34} {'rivulet':>12} {'per-event':>12} {'ratio':>9}")
    for label, mine, per_event in rows:
        ratio = f"{per_event / mine:,.0f}x" if mine and per_event else "-"
        print(f"{label:<34} {mine:>12,.0f} {per_event:>12,.0f} {ratio:>9}")
    busy = consume.wall - args.drain
    print(f"{'wall seconds (moto)':<34} {(produce.wall + busy) * per_m:>12,.0f} {m['per_event_s'] * base:>12,.0f} "
          f"{m['per_event_s'] * base / ((produce.wall + busy) * per_m):>8,.0f}x   (produce + consume less the drain wait)")
    sizes = ours.put_records_sizes
    print(f"records per PutRecords: average {sum(sizes) / len(sizes):.1f}; BatchWriteItem items per request: "
          f"{ddb_items / max(1, ddb_counts):.1f}")

    objects = m["objects"]
    most = max(objects.values(), default=0)
    tables = Counter(table for table, *_ in objects)
    print(f"S3 objects per (table, hour, partition): at most {most}, mean {sum(objects.values()) / max(1, len(objects)):.2f} "
          f"over {len(objects):,} ({', '.join(f'{t} {n:,}' for t, n in sorted(tables.items()))})")
    checks = []
    if name == "sparse":
        checks.append((f"sparse: at most {S3_TARGET} S3 PUTs per (table, hour, partition): {most}", most <= S3_TARGET))
        ddb_m, base_m = ddb_requests * per_m, theirs.service("dynamodb") * base
        checks.append((f"sparse: DynamoDB requests per 1M events <= {DDB_TARGET:,}: {ddb_m:,.0f}", ddb_m <= DDB_TARGET))
        checks.append((f"sparse: at least {DDB_FEWER}x fewer DynamoDB requests than per event: {base_m / ddb_m:,.1f}x",
                       base_m >= DDB_FEWER * ddb_m))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["dense", "sparse", "both"], default="both")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--drain", type=float, default=2.0, help="consume --drain seconds")
    parser.add_argument("--sample", type=int, default=2000, help="events written the per-event way")
    parser.add_argument("--seed", type=int, default=None, help="default: 7 (dense), 42 (sparse)")
    parser.add_argument("--sparse-density", type=int, default=1_000_000,
                        help="sparse rows are the first --rows of a file of this many rows (30 days)")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    workloads = ["dense", "sparse"] if args.workload == "both" else [args.workload]
    moto = start_moto()
    checks: list[tuple[str, bool]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in workloads:
                checks += report(name, args, measure(name, args, moto, Path(tmp)))
    finally:
        assert moto.stdin is not None
        moto.stdin.close()
        moto.wait(timeout=10)
    print()
    for text, ok in checks:
        print(f"target {text} {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
