"""Live metrics: every declared pipeline metric moves, and a scrape of
/metrics after a `consume` agrees with its run summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from consumers.fan_out import SinkFanOut
from consumers.ports import Sink
from consumers.run_summary import RunSummary
from observability import metrics
from streams.batches import BatchKind, CountedBatch
from streams.events import DeadLetter, Event, Reason
from streams.window_counts import WindowCounts
from tests.conftest import ROOT

SAMPLE = ROOT / "samples" / "events_sample.csv"

# Runs `consume` in a fresh process, then serves that process's /metrics over
# HTTP (the ops router of the HTTP service) and scrapes it.
SCRAPE_AFTER_CONSUME = r"""
import contextlib, io, json, sys, urllib.request
from daemon.cli import main
from fastapi import FastAPI
from service.ops import build_router
from service.runner import start_http_server

out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
app = FastAPI()
app.include_router(build_router(lambda: {}))
with start_http_server(app, "127.0.0.1", 0) as handle:
    text = urllib.request.urlopen(handle.url + "/metrics", timeout=10).read().decode()
print(json.dumps({"code": code, "summary": json.loads(out.getvalue()), "metrics": text}))
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(found: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def test_a_scrape_after_consume_matches_the_run_summary(tmp_path):
    spool = tmp_path / "spool"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    produced = subprocess.run(
        [sys.executable, str(ROOT / "run_stream_processing.py"), "produce", "--input", str(SAMPLE),
         "--to", f"spool:{spool}", "--data-dir", str(tmp_path / "produce")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert produced.returncode == 0, produced.stderr
    # Records a producer would not have sent: junk, a missing field, a
    # duplicate, a far-future event, a blank line.
    from producers.spool import SpoolWriter

    with SpoolWriter(spool) as writer:
        writer.send([
            b"not json at all",
            b'{"customer_id": "c1", "event_type": "x", "timestamp": "2021-03-01T04:30:00Z"}',
            b'{"customer_id": "c1", "event_type": "x", "transaction_id": "t1", "timestamp": "2021-03-01T04:31:00Z"}',
            b'{"customer_id": "c1", "event_type": "x", "transaction_id": "t1", "timestamp": "2021-03-01T04:31:00Z"}',
            b'{"customer_id": "c1", "event_type": "x", "transaction_id": "t2", "timestamp": "2999-01-01T00:00:00Z"}',
            b"",
        ])
    result = subprocess.run(
        [sys.executable, "-c", SCRAPE_AFTER_CONSUME, "consume", "--from", f"spool:{spool}", "--drain", "1",
         "--json", "--data-dir", str(tmp_path / "consume")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["code"] == 0
    summary, found = report["summary"], samples(report["metrics"])

    assert summary["read"] == 23 and summary["duplicates"] == 1  # 17 + 6 appended
    assert total(found, "rivulet_events_in_total") == summary["read"]
    assert total(found, "rivulet_events_valid_total") == summary["valid"]
    assert total(found, "rivulet_duplicates_total") == summary["duplicates"]
    assert total(found, "rivulet_blank_records_total") == 1
    for reason, n in summary["dead_letter_reasons"].items():
        assert total(found, "rivulet_dead_letters_total", reason=reason) == n, reason
    assert total(found, "rivulet_dead_letters_total") == sum(summary["dead_letter_reasons"].values())
    assert {"late", "malformed", "missing field", "future"} <= set(summary["dead_letter_reasons"])
    assert summary["read"] == (summary["valid"] + summary["duplicates"] + 1
                               + sum(summary["dead_letter_reasons"].values()))
    # --drain writes open windows as provisional counts; final ones are the summary's.
    assert total(found, "rivulet_window_flushes_total", final="true") == summary["windows_written"]
    assert total(found, "rivulet_window_flushes_total", final="false") > 0
    assert total(found, "rivulet_batch_records_count") >= 1
    assert total(found, "rivulet_batch_records_sum") == summary["read"]
    for sink in ("dead-letters", "raw-events", "aggregates", "counts"):
        writes = total(found, "rivulet_sink_writes_total", sink=sink)
        assert writes >= 1, sink
        assert total(found, "rivulet_sink_latency_seconds_count", sink=sink) == writes
        assert total(found, "rivulet_sink_failures_total", sink=sink) == 0
        assert total(found, "rivulet_sink_flush_seconds_count", sink=sink) >= 1
    source = f"spool:{spool.resolve()}"
    assert total(found, "rivulet_watermark_seconds", source=source) > 1.6e9  # 2021, in seconds
    lag = total(found, "rivulet_event_lag_seconds", source=source)
    assert lag > 0  # the newest sample event is from 2021: years behind the wall clock
    assert total(found, "rivulet_checkpoints_total") >= 1
    assert total(found, "rivulet_last_checkpoint_timestamp_seconds") > time.time() - 600
    assert ("rivulet_queue_depth", (("source", "spool"),)) not in found or True  # spool: no queue
    # Bounded labels: no customer, key or event value in any label.
    labels = {v for (_, ls) in found for _, v in ls}
    assert not {"c1", "b4f9279a0196e40632e947dd1a88e857", "t1"} & labels


def _batch(partition: str, events, read: int, **fields) -> CountedBatch:
    return CountedBatch(partition, BatchKind.DATA, events=events, read=read, **fields)


def test_every_declared_metric_is_fed_per_batch_with_bounded_labels():
    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    partition = "file:/tmp/metrics-unit.csv"
    before = {
        "in": value("rivulet_events_in_total", source=partition),
        "valid": value("rivulet_events_valid_total", source=partition),
        "dup": value("rivulet_duplicates_total", source=partition),
        "late": value("rivulet_dead_letters_total", reason="late"),
        "final": value("rivulet_window_flushes_total", rollup="unit_rollup", final="true"),
        "writes": value("rivulet_sink_writes_total", sink="unit-sink"),
        "failures": value("rivulet_sink_failures_total", sink="unit-sink"),
    }
    now_s = 1_700_000_000.0
    events = [Event("c", "x", f"t{i}", int((now_s - 30) * 1e6) + i, {}, partition, i) for i in range(3)]
    letters = [DeadLetter(Reason.LATE, "late", partition, 9, b"r") for _ in range(2)]
    import polars as pl

    frame = pl.DataFrame({"window_start_us": [0, 3_600_000_000], "customer_id": ["a", "b"], "count": [1, 2],
                          "final": [True, False]})
    counts = WindowCounts("unit_rollup", ("customer_id",), 3_600_000_000, partition, frame)

    class UnitSink(Sink):
        name = "unit-sink"

        def __init__(self):
            self.fail = False

        def write(self, batch):
            if self.fail:
                raise RuntimeError("down")

        def flush(self):
            pass

        def pending_floor(self, partition):
            return None

        def close(self):
            pass

    sink = UnitSink()
    fan_out = SinkFanOut([sink], RunSummary(), metrics=metrics.PipelineMetrics(wall_clock=lambda: now_s,
                                                                               labels=metrics.BoundedLabels(2)))
    fan_out.on_next(_batch(partition, events, 7, duplicates=2, dead_letters=letters, late=2, windows=[counts],
                           watermark_us=int((now_s - 600) * 1e6)))
    assert value("rivulet_events_in_total", source=partition) - before["in"] == 7
    assert value("rivulet_events_valid_total", source=partition) - before["valid"] == 3
    assert value("rivulet_duplicates_total", source=partition) - before["dup"] == 2
    assert value("rivulet_dead_letters_total", reason="late") - before["late"] == 2
    assert value("rivulet_window_flushes_total", rollup="unit_rollup", final="true") - before["final"] == 1
    assert value("rivulet_sink_writes_total", sink="unit-sink") - before["writes"] == 1
    assert value("rivulet_watermark_seconds", source=partition) == now_s - 600
    assert abs(value("rivulet_event_lag_seconds", source=partition) - (30 - 2e-6)) < 1e-3
    sink.fail = True
    try:
        fan_out.on_next(_batch(partition, (), 1))
    except RuntimeError:
        pass
    assert value("rivulet_sink_failures_total", sink="unit-sink") - before["failures"] == 1
    # A third partition is folded into "other": labels stay bounded.
    sink.fail = False
    for name in ("file:/tmp/metrics-unit-2.csv", "file:/tmp/metrics-unit-3.csv"):
        fan_out.on_next(_batch(name, (), 1))
    assert value("rivulet_events_in_total", source="file:/tmp/metrics-unit-3.csv") == 0
    assert value("rivulet_events_in_total", source="other") >= 1


def test_run_serves_metrics_with_a_flag_while_it_runs(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_stream_processing.py"), "run", "--source", "random", "--rate", "2000",
         "--data-dir", str(tmp_path), "--metrics-port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith("metrics: serving on http://127.0.0.1:"), line
        url = line.split()[-1]
        deadline = time.monotonic() + 30
        events = 0.0
        while time.monotonic() < deadline and events < 100:
            time.sleep(0.5)
            events = total(samples(urllib.request.urlopen(url, timeout=5).read().decode()), "rivulet_events_in_total")
        assert events >= 100
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "records read" in out


def test_the_newest_event_time_of_a_columnar_batch_is_a_column_max():
    """EventColumns.times_us is a property (the column): the metrics take its
    max and never build the batch's events one by one."""
    from streams.event_columns import EventColumns

    class NoIteration(EventColumns):
        def __iter__(self):
            raise AssertionError("iterated the batch's events")

    events = EventColumns.from_lists("p", ["c"] * 3, ["x"] * 3, ["t1", "t2", "t3"], [5, 9, 7], [0, 1, 2])
    assert metrics._newest_event_us(NoIteration(events.partition, events.frame)) == 9
    assert metrics._newest_event_us([Event("c", "x", "t", 4, {}, "p", 0)]) == 4
