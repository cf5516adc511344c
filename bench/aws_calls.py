#!/usr/bin/env python3
"""Count AWS requests per service: Rivulet's batched design against a
per-event design (one PutRecord and one DynamoDB UpdateItem per event, as the
seeds do), both against a moto server this script starts itself.

    python bench/aws_calls.py                       # 100k events
    python bench/aws_calls.py --rows 20000 --sample 500

Rivulet side: `produce --to kinesis:S --create-resources` then `consume --from
kinesis:S --drain 2` with `config/aws.toml` (every rollup in it, raw events
and aggregates to S3), in this process, counting every request of every boto3
client through botocore's `before-call.*.*` event. Per-event side: a sample of
events written the seeds' way, measured, then scaled.

The DynamoDB ratio depends on the workload: Rivulet writes one item per
(rollup, key, window, shard), so it is about events per such item. The default
workload is ~0.9M events an hour (`--step-ms 4`) from 200 customers over 2
shards; fewer customers or a denser stream raise it, more lower it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WRITE_OPERATIONS = {"UpdateItem", "PutItem", "BatchWriteItem", "DeleteItem", "TransactWriteItems"}


class RequestCounter:
    """Counts requests by (service, operation) and PutRecords sizes."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.put_records_sizes: list[int] = []

    def attach(self, client) -> None:
        client.meta.events.register("before-call.*.*", self._on_call)
        client.meta.events.register("provide-client-params.kinesis.PutRecords", self._on_put_records)

    def _on_call(self, model, **_) -> None:
        self.calls[(model.service_model.endpoint_prefix, model.name)] += 1

    def _on_put_records(self, params, **_) -> None:
        self.put_records_sizes.append(len(params["Records"]))

    def by_service(self) -> Counter:
        out: Counter = Counter()
        for (service, _), n in self.calls.items():
            out[service] += n
        return out

    def dynamodb_writes(self) -> int:
        return sum(n for (service, op), n in self.calls.items() if service == "dynamodb" and op in WRITE_OPERATIONS)


def start_moto() -> str:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return endpoint


def run_rivulet(input_path: Path, work: Path, counter: RequestCounter, shards: int) -> tuple[float, float, str]:
    from daemon.cli import main as cli
    from producers.aws_clients import observe_new_clients

    os.environ.update(
        RIVULET__AWS__BUCKET="bench-bucket", RIVULET__AWS__COUNT_TABLE="bench-counts",
        RIVULET__AWS__CHECKPOINT_TABLE="bench-checkpoints", RIVULET__AWS__SHARD_COUNT=str(shards),
    )
    common = ["--config", str(ROOT / "config" / "aws.toml"), "--data-dir", str(work)]
    stop = observe_new_clients(counter.attach)
    try:
        started = time.monotonic()
        if cli(["produce", "--input", str(input_path), "--to", "kinesis:bench", "--create-resources", *common]) != 0:
            raise SystemExit("produce failed")
        produced = time.monotonic()
        if cli(["consume", "--from", "kinesis:bench", "--drain", "2", "--json", *common]) != 0:
            raise SystemExit("consume failed")
        consumed = time.monotonic()
    finally:
        stop()
    return produced - started, consumed - produced, "config/aws.toml"


def run_per_event(lines: list[str], counter: RequestCounter, shards: int) -> float:
    """The seeds' way: PutRecord per event, then UpdateItem ADD per event."""
    from producers.aws_clients import AwsConfig, aws_client, ensure_stream, ensure_table
    from streams.events import format_utc
    from streams.timestamps import parse_timestamp_us

    config = AwsConfig()
    kinesis, dynamodb = aws_client("kinesis", config), aws_client("dynamodb", config)
    ensure_stream(kinesis, "per-event", True, shards)
    ensure_table(dynamodb, "per-event-counts", True, "pk", "sk")
    counter.attach(kinesis)
    counter.attach(dynamodb)
    started = time.monotonic()
    for line in lines:
        fields = line.split(",")
        if len(fields) != 4:
            continue
        customer, event_type, txn, stamp = fields
        try:
            t = parse_timestamp_us(stamp)
        except ValueError:
            continue
        kinesis.put_record(StreamName="per-event", PartitionKey=customer, Data=line.encode())
        dynamodb.update_item(
            TableName="per-event-counts",
            Key={"pk": {"S": customer}, "sk": {"S": format_utc(t - t % 3_600_000_000)}},
            UpdateExpression="ADD #c :one",
            ExpressionAttributeNames={"#c": "count"},
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--step-ms", type=int, default=4, help="event-time step between rows (4 ms: ~0.9M events/hour)")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--sample", type=int, default=2000, help="events written the per-event way")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from bench.generate_events import generate

    start_moto()
    lines = list(generate(args.rows, args.seed, customers=args.customers, step_ms=args.step_ms))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        input_path = work / "events.csv"
        input_path.write_text("\n".join(lines) + "\n")
        ours = RequestCounter()
        produce_s, consume_s, profile = run_rivulet(input_path, work / "data", ours, args.shards)
        baseline = RequestCounter()
        sample = lines[: args.sample]
        baseline_s = run_per_event(sample, baseline, args.shards)

    valid = sum(ours.put_records_sizes)
    sampled = baseline.calls[("kinesis", "PutRecord")]
    per_m = 1_000_000 / valid
    base_per_m = 1_000_000 / sampled

    print(f"workload: {args.rows:,} rows ({valid:,} valid events sent), {args.customers} customers, "
          f"{args.step_ms} ms event-time step, {args.shards} shards, profile {profile}")
    print(f"rivulet: produce {produce_s:.1f}s, consume {consume_s:.1f}s; per-event sample: {sampled:,} events in "
          f"{baseline_s:.1f}s (moto, one client each)\n")
    print(f"{'service':<10} {'operation':<28} {'rivulet':>10} {'per 1M events':>14}")
    for (service, op), n in sorted(ours.calls.items()):
        print(f"{service:<10} {op:<28} {n:>10,} {n * per_m:>14,.0f}")
    print()
    print(f"{'requests per 1M events':<32} {'rivulet':>12} {'per-event':>12} {'ratio':>9}")
    services = sorted(set(ours.by_service()) | set(baseline.by_service()))
    for service in services:
        mine = ours.by_service()[service] * per_m
        theirs = baseline.by_service()[service] * base_per_m
        ratio = f"{theirs / mine:,.0f}x" if mine and theirs else "-"
        print(f"{service:<32} {mine:>12,.0f} {theirs:>12,.0f} {ratio:>9}")
    ddb_ours = ours.dynamodb_writes() * per_m
    ddb_theirs = baseline.dynamodb_writes() * base_per_m
    kin_ours = ours.calls[("kinesis", "PutRecords")] * per_m
    kin_theirs = baseline.calls[("kinesis", "PutRecord")] * base_per_m
    print(f"{'dynamodb writes':<32} {ddb_ours:>12,.0f} {ddb_theirs:>12,.0f} {ddb_theirs / ddb_ours:>8,.0f}x")
    print(f"{'kinesis put calls':<32} {kin_ours:>12,.0f} {kin_theirs:>12,.0f} {kin_theirs / kin_ours:>8,.0f}x")
    sizes = ours.put_records_sizes
    average = sum(sizes) / len(sizes)
    print(f"\nrecords per PutRecords: average {average:.1f}, smallest {min(sizes)}, calls {len(sizes)}")
    ddb_ratio = ddb_theirs / ddb_ours
    print(f"target >=100x fewer DynamoDB writes: {ddb_ratio:,.0f}x {'PASS' if ddb_ratio >= 100 else 'FAIL'}")
    print(f"target >=450 records per PutRecords: {average:.1f} {'PASS' if average >= 450 else 'FAIL'}")


if __name__ == "__main__":
    main()
