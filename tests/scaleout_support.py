"""Helpers for the scale-out tests: real `consume` worker processes on one
Kinesis stream, sharing its shards through the lease table.

`Cluster` names its own stream and tables, produces CSV chunks with the real
`produce` command (ONE producer process at a time: moto loses records under
concurrent writers to a shard), starts workers as a systemd unit would
(`consume --from kinesis:STREAM --drain N`), observes the lease table, and
compares the exported counts with `tests/oracle.py`.

`kinesalite` (fixture): kinesalite 3.3.3 from node_modules (`make
node_modules/.bin/kinesalite`) on 127.0.0.1, a free port; the test skips with
the reason when node or kinesalite is missing.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from bench.generate_events import generate, generate_sparse
from tests.aws_fixtures import client, unique
from tests.conftest import ROOT, run_cli
from tests.oracle import DEFAULT_ROLLUPS, MINUTE, run_oracle

LATENESS = "5m"  # the generator's disorder is at most 4 min: nothing on time is late in any shard
LATENESS_US = 5 * MINUTE
SPARSE_LATENESS = "10m"  # the sparse generator's disorder is under 10 min
FAILOVER = 3.0
RENEW = 0.5
KINESALITE = ROOT / "node_modules" / ".bin" / "kinesalite"


def event_lines(rows: int, seed: int, unique_events: bool = False) -> list[str]:
    """Generated CSV rows, 250 ms apart (minute windows close all along).
    `unique_events`: without the re-sent duplicates (a split can put the two
    copies into different shards, i.e. different partitions)."""
    lines = list(generate(rows, seed=seed, customers=60, step_ms=250))
    if not unique_events:
        return lines
    seen: set[str] = set()
    out = []
    for line in lines:
        fields = line.split(",")
        if len(fields) == 4 and fields[2] in seen:
            continue
        seen.add(fields[2] if len(fields) == 4 else line)
        out.append(line)
    return out


def sparse_lines(rows: int, density: int = 50_000) -> list[str]:
    """The first `rows` rows of the `density`-row sparse workload
    (bench/generate_events.py --shape sparse: 10,000 Zipf-skewed customers
    over 30 days, mostly one or two events per (customer, hour) window).
    It moves rows back by up to 599 s, so it needs SPARSE_LATENESS."""
    return list(itertools.islice(generate_sparse(density), rows))


def expected_counts(lines: list[str], lateness_us: int = LATENESS_US) -> dict[str, Counter]:
    result = run_oracle(lines, lateness_us, DEFAULT_ROLLUPS)
    out: dict[str, Counter] = {}
    for rollup, counts in result.counts.items():
        out[rollup] = Counter({(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start // 1_000_000)), key): n
                               for (start, key), n in counts.items()})
    return out


class Cluster:
    def __init__(self, tmp: Path, shards: int = 4, extra_env: dict[str, str] | None = None,
                 lateness: str = LATENESS) -> None:
        self.tmp = tmp
        self.lateness = lateness
        self.stream = unique("so")
        self.lease_table = unique("so-leases")
        self.env = {
            "RIVULET__AWS__BUCKET": unique("so-bkt"),
            "RIVULET__AWS__COUNT_TABLE": unique("so-counts"),
            "RIVULET__AWS__CHECKPOINT_TABLE": self.lease_table,
            "RIVULET__AWS__SHARD_COUNT": str(shards),
            "RIVULET__AWS__FAILOVER_SECONDS": str(FAILOVER),
            "RIVULET__AWS__LEASE_RENEW_SECONDS": str(RENEW),
            "RIVULET__AWS__SHARD_DISCOVERY_SECONDS": "1.0",
            "RIVULET__PIPELINE__CHECKPOINT_INTERVAL": "0.5",
            **(extra_env or {}),
        }
        self.workers: dict[str, subprocess.Popen] = {}
        self.produced: list[str] = []
        self.chunks = 0
        self.dynamodb = client("dynamodb", os.environ.get("AWS_ENDPOINT_URL"), max_attempts=3)

    # -- producing ---------------------------------------------------------------

    def produce(self, lines: list[str]) -> None:
        self.chunks += 1
        path = self.tmp / f"chunk-{self.chunks}.csv"
        path.write_text("\n".join(lines) + "\n")
        args = ["produce", "--input", str(path), "--to", f"kinesis:{self.stream}", "--config", "config/aws.toml",
                "--data-dir", str(self.tmp / "producer")]
        if self.chunks == 1:
            args.append("--create-resources")
        result = run_cli(*args, env=self.env)
        assert result.returncode == 0, result.stderr
        self.produced.extend(lines)

    # -- workers -------------------------------------------------------------------

    def start(self, name: str, drain: float = 5.0) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run_stream_processing.py"), "--log-level", "INFO", "consume",
             "--from", f"kinesis:{self.stream}", "--config", "config/aws.toml", "--drain", str(drain),
             "--lateness", self.lateness, "--json", "--data-dir", str(self.tmp / name)],
            cwd=ROOT, env={**os.environ, **self.env, "RIVULET__AWS__WORKER_ID": name},
            stdout=subprocess.PIPE, stderr=log, text=True,
        )
        self.workers[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> float:
        self.workers[name].send_signal(sig)
        return time.monotonic()

    def wait_all(self, timeout: float = 90.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        codes = {}
        for name, proc in self.workers.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for other in self.workers.values():
                    if other.poll() is None:
                        other.kill()
                raise AssertionError(f"worker {name} did not drain-exit within {timeout}s:\n{self.log(name)[-3000:]}")
            codes[name] = proc.returncode
        return codes

    def stop_all(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    # -- observing -------------------------------------------------------------------

    def leases(self) -> dict[str, dict]:
        """shardId -> {owner, counter, checkpoint, finished, parents}."""
        out = {}
        params = {"TableName": self.lease_table, "ConsistentRead": True}
        while True:
            page = self.dynamodb.scan(**params)
            for item in page.get("Items", ()):
                if item.get("streamName", {}).get("S") != self.stream:
                    continue
                out[item["shardId"]["S"]] = {
                    "owner": item.get("leaseOwner", {}).get("S"),
                    "counter": int(item.get("leaseCounter", {}).get("N", "0")),
                    "checkpoint": item.get("checkpoint", {}).get("S"),
                    "finished": item.get("finished", {}).get("N") == "1",
                    "parents": sorted(item.get("parentShardIds", {}).get("SS", [])),
                    "switches": int(item.get("ownerSwitchesSinceCheckpoint", {}).get("N", "0")),
                }
            if not page.get("LastEvaluatedKey"):
                return out
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def wait_for(self, condition, timeout: float = 30.0, every: float = 0.1) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            leases = self.leases()
            if condition(leases):
                return leases
            if time.monotonic() > deadline:
                raise AssertionError(f"lease table never reached the condition: {leases}")
            time.sleep(every)

    # -- results -----------------------------------------------------------------------

    def exported(self, rollup: str) -> Counter:
        result = run_cli("export", "--rollup", rollup, "--config", "config/aws.toml",
                         "--data-dir", str(self.tmp / "export"), env=self.env)
        assert result.returncode == 0, result.stderr
        rows = list(csv.reader(io.StringIO(result.stdout)))
        return Counter({(start, key): int(count) for start, key, count in rows[1:]})

    def assert_counts_equal_the_oracle(self) -> None:
        lateness_us = int(self.lateness[:-1]) * MINUTE
        for rollup, counts in expected_counts(self.produced, lateness_us).items():
            got = self.exported(rollup)
            missing = {k: (v, got.get(k)) for k, v in counts.items() if got.get(k) != v}
            extra = {k: v for k, v in got.items() if k not in counts}
            assert not missing and not extra, f"{rollup}: differs from the oracle: {dict(list(missing.items())[:10])} extra {extra}"


def owners(leases: dict[str, dict]) -> Counter:
    return Counter(l["owner"] for l in leases.values() if l["owner"] and not l["finished"])


@pytest.fixture
def kinesalite(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """kinesalite on 127.0.0.1 for Kinesis; moto stays for DynamoDB and S3."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the resharding test needs kinesalite 3.3.3 (npm)")
    if not KINESALITE.exists():
        pytest.skip("kinesalite is not installed: run `make node_modules/.bin/kinesalite` (needs npm)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [node, str(KINESALITE), "--port", str(port), "--host", "127.0.0.1",
         "--createStreamMs", "0", "--deleteStreamMs", "0", "--updateStreamMs", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.skip("kinesalite did not start")
            time.sleep(0.1)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", endpoint)
    try:
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
