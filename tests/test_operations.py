"""Daemon operations: sd_notify, signals, crashes, hostile input, slow sinks."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from bench.generate_events import generate
from consumers.ports import Sink
from tests.conftest import ROOT, run_cli
from tests.oracle import DEFAULT_ROLLUPS, MINUTE, run_oracle
from tests.test_end_to_end_local import exported, oracle_counts


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run_stream_processing.py"), *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def spool_with(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "in.csv"
    path.write_text("\n".join(lines) + "\n")
    spool = f"spool:{tmp_path / 'spool'}"
    produced = run_cli("produce", "--input", str(path), "--to", spool, "--data-dir", str(tmp_path))
    assert produced.returncode == 0, produced.stderr
    return spool


def committed(tmp_path: Path) -> int:
    db = sqlite3.connect(tmp_path / "spool" / "spool.sqlite3")
    try:
        rows = db.execute("SELECT next_seq FROM offsets").fetchall()
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()
    return max((r[0] for r in rows), default=0)


def test_sd_notify_messages_on_a_real_socket(tmp_path):
    lines = list(generate(3000, seed=3, step_ms=5000))
    spool = spool_with(tmp_path, lines)
    address = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(0.2)
    messages: list[str] = []
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                messages.append(server.recv(4096).decode())
            except socket.timeout:
                pass

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    result = run_cli("consume", "--from", spool, "--drain", "2", "--data-dir", str(tmp_path),
                     env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
    time.sleep(0.3)
    done.set()
    thread.join()
    server.close()
    assert result.returncode == 0, result.stderr
    fields = [f for m in messages for f in m.split("\n")]
    assert "READY=1" in fields
    assert fields.count("WATCHDOG=1") >= 3  # every 0.2 s while healthy during the 2 s drain
    assert any(f.startswith("STATUS=consume: ready spool:") for f in fields)
    assert fields.index("READY=1") < fields.index("WATCHDOG=1") < fields.index("STOPPING=1")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stop_or_crash_mid_stream_then_restart_gives_exact_counts(tmp_path, sig):
    lines = list(generate(60_000, seed=21, step_ms=500))  # about 8 hours of events
    spool = spool_with(tmp_path, lines)
    proc = start_cli("consume", "--from", spool, "--data-dir", str(tmp_path), "--json")
    try:
        deadline = time.time() + 60
        while committed(tmp_path) < 5000 and time.time() < deadline:
            time.sleep(0.05)
        assert committed(tmp_path) >= 5000, "the consumer made no progress"
        started = time.time()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # never leave a daemon behind a failed test
            proc.kill()
            proc.communicate()
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, err
        assert time.time() - started < 30
        assert json.loads(out)["read"] < len(lines)  # it really stopped mid-stream
    else:
        assert proc.returncode == -signal.SIGKILL
    again = run_cli("consume", "--from", spool, "--drain", "1", "--data-dir", str(tmp_path), "--json")
    assert again.returncode == 0, again.stderr
    expected = run_oracle(lines, 10 * MINUTE, DEFAULT_ROLLUPS)
    for rollup in DEFAULT_ROLLUPS:
        assert exported(tmp_path, rollup) == oracle_counts(expected, rollup), rollup
    # Raw events: what was still buffered at the stop or crash was not
    # durable, and the checkpoint stayed below it, so the replay archived it.
    # Read once per (partition, position), the archive is every counted
    # event, and so read once per (partition, dedup key). (Seed 21 has a
    # re-send after the natural checkpoint whose original lies before it:
    # the checkpoint must stay below the original, or the replay takes it.)
    raw = pl.read_parquet(str(tmp_path / "store" / "events" / "**" / "*.parquet"), hive_partitioning=False)
    once = raw.unique(["partition", "position"], keep="first")
    archived = once.select("customer_id", "event_type", "transaction_id", pl.col("timestamp").dt.epoch("us")).rows()
    assert sorted(archived) == sorted(expected.accepted)  # the spool's positions are its own, not line numbers


def _spooled(tmp_path: Path) -> int:
    """Records in the spool so far (read-only: never creates the file)."""
    path = tmp_path / "spool" / "spool.sqlite3"
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return 0
    try:
        return db.execute("SELECT count(*) FROM records").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def test_a_live_consume_writes_objects_per_hour_not_per_checkpoint(tmp_path):
    """`consume` checkpoints once a second; a live stream over several
    seconds still gets at most two objects per (table, hour, partition): raw
    buffers are cut by the hour's end, age or size, and an hour of
    aggregates waits while it costs the checkpoint nothing. (Before: one raw
    object per checkpoint, one minute-rollup object per checkpoint that
    closed a minute.)"""
    spool = f"spool:{tmp_path / 'spool'}"
    # About 5 minutes of event time over 6 s of wall time (50 ms of event time
    # per event), fed while `consume` reads; a minute of lateness, so minute
    # windows close during the run. The producer goes first: `--drain`
    # counts quiet time from the consumer's start.
    producer = start_cli("produce", "--source", "random", "--rate", "1000", "--count", "6000", "--to", spool,
                         "--data-dir", str(tmp_path))
    consumer = None
    try:
        deadline = time.time() + 60
        while _spooled(tmp_path) == 0 and time.time() < deadline:
            time.sleep(0.05)
        started = time.time()
        consumer = start_cli("consume", "--from", spool, "--drain", "3", "--lateness", "1m", "--data-dir",
                             str(tmp_path), "--json")
        assert producer.wait(timeout=60) == 0, producer.communicate()[1]
        assert time.time() - started >= 3  # several checkpoints passed while it came
        out, err = consumer.communicate(timeout=60)
    finally:
        for proc in (producer, consumer):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert consumer.returncode == 0, err
    assert json.loads(out)["read"] == 6000
    per_hour: dict[str, int] = {}
    for path in (tmp_path / "store").rglob("*.parquet"):
        table_hour = str(path.parent.relative_to(tmp_path / "store"))
        per_hour[table_hour] = per_hour.get(table_hour, 0) + 1
    assert any(k.startswith("events/") for k in per_hour) and any(k.startswith("aggregates/") for k in per_hour)
    assert max(per_hour.values()) <= 2, per_hour


def test_hostile_input_file_never_crashes_and_counts_the_good_lines(tmp_path):
    rng = random.Random(4)
    good = list(generate(5000, seed=8))
    bad = [
        b"\xff\xfe\xfd not utf-8",
        b"a,b,c,\x00\x00\x00",
        b"x" * (2 << 20),  # 2 MiB on one line: oversize
        b",".join([b"y" * 100] * 4000),
        b"\x00" * 50,
        bytes(rng.getrandbits(8) for _ in range(300)).replace(b"\n", b"").replace(b"\r", b""),
        b'"unterminated,quote,x,2021-03-01T00:00:00Z',
        b"{}",
        "ünïcödé,☃,\u202e,2021-03-01T00:00:00".encode(),  # no offset
    ]
    lines: list[bytes] = []
    bad_count = 0
    for line in good:
        lines.append(line.encode())
        if rng.random() < 0.01:
            lines.append(rng.choice(bad))
            bad_count += 1
    path = tmp_path / "fuzz.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = run_cli("run", "--input", str(path), "--data-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    expected = run_oracle(good, 10 * MINUTE, DEFAULT_ROLLUPS)
    assert summary["malformed"] == expected.malformed + bad_count
    for rollup in DEFAULT_ROLLUPS:
        assert exported(tmp_path, rollup) == oracle_counts(expected, rollup)
    letters = (tmp_path / "dead_letters.ndjson").read_text().splitlines()
    assert len(letters) == expected.malformed + bad_count + expected.late
    assert any(json.loads(l)["reason"] == "oversize" for l in letters)
    assert all(len(l) < 200_000 for l in letters)  # cut, never a 2 MiB line


def test_a_slow_sink_throttles_the_source_and_memory_stays_flat():
    from config.bindings import configure
    from config.settings import load_settings
    from daemon.job import parser_for, run_job
    from producers.random_source import RandomEventSource

    class SleepySink(Sink):
        name = "sleepy"
        batches = 0

        def write(self, batch):
            self.batches += 1
            time.sleep(0.02)

        def flush(self):
            pass

        def pending_floor(self, partition):
            return None

        def close(self):
            pass

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    settings = load_settings().with_overrides(batch_size=500)
    configure(settings)
    source = RandomEventSource(count=None, batch_size=500)
    sink = SleepySink()
    samples = []
    threading.Timer(4.0, source.stop).start()

    def sample():
        for _ in range(8):
            time.sleep(0.5)
            samples.append(rss_mib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    summary = run_job(settings, source.batches(), parser_for(settings, "ndjson"), sinks=[sink])
    sampler.join()
    # The source only ran as fast as the sink took batches (plus the final flush).
    assert summary.read <= (sink.batches + 1) * 500
    assert summary.read < 4.5 / 0.02 * 500
    assert max(samples[2:]) - samples[1] < 15, samples
