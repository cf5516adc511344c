"""SIGKILL while objects are being written, then run again into the same data
directory: every object a reader can see is complete, and the counts (count
store and aggregate tables) equal the independent oracle."""

from __future__ import annotations

import gzip
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from consumers.local_object_store import LocalObjectStore
from tests.aggregate_support import exported_counts, reader_rule_totals, sparse_events
from tests.conftest import ROOT, run_cli
from tests.oracle import DEFAULT_ROLLUPS, MINUTE, run_oracle

pytestmark = pytest.mark.slow

TEMP_FILE = re.compile(r"\..+\.\d+-\d+\.tmp")


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run_stream_processing.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_once_objects_appear(process: subprocess.Popen, aggregates: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (aggregates.is_dir() and any(aggregates.rglob("*.parquet"))):
        if process.poll() is not None:
            pytest.fail(f"finished before any aggregate object was written (make the input larger): "
                        f"{process.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "no aggregate object appeared"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()


def temp_files(store_dir: Path) -> list[Path]:
    """The hidden files in a store: only temp files of killed puts, which
    neither `list` nor a reader's `*.parquet` glob takes for objects."""
    listed = set(LocalObjectStore(store_dir).list())
    temps = [p for p in store_dir.rglob(".*") if p.is_file()]
    for path in temps:
        assert TEMP_FILE.fullmatch(path.name) and path.relative_to(store_dir).as_posix() not in listed, path
    return temps


def assert_every_object_complete(store_dir: Path) -> list[Path]:
    """Every object a reader can see opens and reads whole; anything else is
    a temp file (returned)."""
    temps = temp_files(store_dir)
    for path in sorted(p for p in store_dir.rglob("*") if p.is_file() and p not in temps):
        key = path.relative_to(store_dir).as_posix()
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            assert table.num_rows == pq.ParquetFile(path).metadata.num_rows > 0, key
        elif path.suffix == ".gz":
            assert gzip.decompress(path.read_bytes()), key
        else:
            pytest.fail(f"an object of unknown kind (teach this check to read it): {key}")
    return temps


def assert_counts_equal_the_oracle(data_dir: Path, lines: list[str]) -> None:
    expected = run_oracle(lines, 10 * MINUTE, DEFAULT_ROLLUPS)
    for rollup, (key_field, _) in DEFAULT_ROLLUPS.items():
        exported = run_cli("export", "--rollup", rollup, "--data-dir", str(data_dir))
        assert exported.returncode == 0, exported.stderr
        assert exported_counts(exported.stdout) == Counter(expected.counts[rollup]), rollup
        assert reader_rule_totals(data_dir, rollup, key_field) == Counter(expected.counts[rollup]), rollup
    by_customer: dict[str, Counter] = {}
    for (start_us, customer), count in expected.counts["customer_hourly"].items():
        by_customer.setdefault(customer, Counter())[start_us] += count
    busiest = sorted(by_customer, key=lambda c: (-sum(by_customer[c].values()), c))[:3]
    for customer in busiest:
        result = run_cli("query", "buckets", "--customer", customer, "--start", "2021-01-01T00:00:00Z",
                         "--end", "2022-01-01T00:00:00Z", "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stderr
        buckets = json.loads(result.stdout)["buckets"]
        assert sum(b["count"] for b in buckets) == sum(by_customer[customer].values())
        assert len(buckets) == len(by_customer[customer])


def test_run_killed_while_writing_objects_then_run_again(tmp_path):
    # Sparse keys make about two windows per event, so the writer's buffer
    # bound (200k rows) writes objects well before the end of the file.
    lines = sparse_events(160_000, hours=400, customers=500_000, seed=21)
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    data_dir = tmp_path / "data"
    kill_once_objects_appear(start("run", "--input", str(path), "--data-dir", str(data_dir)),
                             data_dir / "store" / "aggregates")
    killed = set(LocalObjectStore(data_dir / "store").list())
    assert_every_object_complete(data_dir / "store")

    again = run_cli("run", "--input", str(path), "--data-dir", str(data_dir), "--json", timeout=300)
    assert again.returncode == 0, again.stderr
    assert_every_object_complete(data_dir / "store")
    final = set(LocalObjectStore(data_dir / "store").list())
    aggregates_killed = {k for k in killed if k.startswith("aggregates/")}
    # The run starts over from the file's start and writes the same objects again.
    assert aggregates_killed and aggregates_killed <= final
    assert_counts_equal_the_oracle(data_dir, lines)


def test_consume_killed_between_checkpoints_then_drained(tmp_path):
    """The spool replays from its last checkpoint: windows open then are
    rebuilt whole, windows final before it partly; the partial versions land
    in objects of their own, and the reader rule still gives the oracle."""
    lines = sparse_events(60_000, hours=30, customers=5_000, seed=22)
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    spool = f"spool:{tmp_path / 'spool'}"
    produced = run_cli("produce", "--input", str(path), "--to", spool, "--data-dir", str(tmp_path))
    assert produced.returncode == 0, produced.stderr
    kill_once_objects_appear(start("consume", "--from", spool, "--data-dir", str(tmp_path)),
                             tmp_path / "store" / "aggregates")
    assert_every_object_complete(tmp_path / "store")

    drained = run_cli("consume", "--from", spool, "--drain", "1", "--data-dir", str(tmp_path), "--json", timeout=300)
    assert drained.returncode == 0, drained.stderr
    assert_every_object_complete(tmp_path / "store")
    assert_counts_equal_the_oracle(tmp_path, lines)


PUT_LOOP = """
import sys
from consumers.local_object_store import LocalObjectStore
store = LocalObjectStore(sys.argv[1])
i = 0
while True:
    store.put(f"obj/{i % 3}.bin", bytes([i % 251]) * (16 << 20))
    print(i, flush=True)
    i += 1
"""


def test_a_put_killed_midway_leaves_no_partial_object(tmp_path):
    """Killed while writing a 16 MiB body: readers see the previous whole
    object or none, never a part; the part is a hidden temp file."""
    temps: list[Path] = []
    for attempt in range(10):
        root = tmp_path / f"store{attempt}"
        process = subprocess.Popen([sys.executable, "-c", PUT_LOOP, str(root)], cwd=ROOT, stdout=subprocess.PIPE)
        for _ in range(4):
            process.stdout.readline()
        time.sleep(0.003 * attempt)
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        store = LocalObjectStore(root)
        for key in store.list():
            body = store.get(key)
            assert len(body) == 16 << 20 and body.count(body[:1]) == len(body), key
        temps += temp_files(root)
        if temps:
            break
    assert temps, "no kill landed inside a put in ten tries"
