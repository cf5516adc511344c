#!/usr/bin/env python3
"""Optimizely event delivery: requests per 10,000 events, and sink throughput.

For the same workload (N user events from a real SDK client on the test
datafile: for each user one `activate` and one `track`), it counts the
requests that would reach the Event API:

  (a) SDK default: `Optimizely(...)` builds a BatchEventProcessor with
      batch_size 1, so every event is one LogEvent = one request (counted
      with a counting dispatcher);
  (b) the SDK's BatchEventProcessor class default, batch_size 10;
  (c) ours: the LogEvents of (a) through BulkEventDispatcher → spool →
      PayloadForwarder → OptimizelyBulkSink → a local recording HTTP server
      (defaults: 1,000 visitors / 3,000,000 bytes per request).

Then the sink's throughput alone: pre-built payload records written straight
into the sink, POSTed to the local recording server (events/s from the first
write until every event is acknowledged), median of `--repeats`.

    python bench/optimizely.py --events 10000 --throughput-events 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ is sys.path[0], and this file would shadow the SDK's
# `optimizely` package: replace it with the project root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from optimizely import optimizely as optimizely_sdk  # noqa: E402
from optimizely.helpers.sdk_settings import OptimizelySdkSettings  # noqa: E402

from optimizely_integration.bulk_event_dispatcher import BulkEventDispatcher  # noqa: E402
from optimizely_integration.bulk_sink import OptimizelyBulkSink  # noqa: E402
from optimizely_integration.forwarder import PayloadForwarder  # noqa: E402
from optimizely_integration.payload_record import encode_payload_record  # noqa: E402
from producers.spool import SpoolReader, SpoolWriter  # noqa: E402

DATAFILE = (ROOT / "tests" / "fixtures" / "optimizely" / "datafile_rev7.json").read_text()
# Everyone bucketed, no flag decisions: every activate is one impression.
_data = json.loads(DATAFILE)
_data["experiments"][0]["trafficAllocation"] = [
    {"entityId": "70001", "endOfRange": 5000}, {"entityId": "70002", "endOfRange": 10000}]
DATAFILE = json.dumps(_data)


class CountingDispatcher:
    def __init__(self) -> None:
        self.log_events: list[Any] = []
        self.lock = threading.Lock()

    def dispatch_event(self, log_event: Any) -> None:
        with self.lock:
            self.log_events.append(log_event)

    def events(self) -> int:
        return sum(len(s["events"]) for e in self.log_events for v in e.params["visitors"] for s in v["snapshots"])


def sdk_run(events: int, batch_size: int | None) -> CountingDispatcher:
    """`events` user events (half impressions, half conversions)."""
    dispatcher = CountingDispatcher()
    kwargs: dict[str, Any] = {"settings": OptimizelySdkSettings(odp_disabled=True)}
    if batch_size is not None:
        kwargs["event_processor_options"] = {"batch_size": batch_size, "flush_interval": 30}
    client = optimizely_sdk.Optimizely(DATAFILE, event_dispatcher=dispatcher, **kwargs)
    for i in range(events // 2):
        user = f"user-{i}"
        client.activate("checkout_flow_experiment", user, {"tier": "gold"})
        client.track("purchase", user, {"tier": "gold"}, {"revenue": i})
        if i % 500 == 0:
            time.sleep(0.002)  # let the SDK's 1,000-slot queue drain: it drops when full
    client.close()
    return dispatcher


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests = 0
    events = 0
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        count = body.count(b'"uuid":')
        with _Recorder.lock:
            _Recorder.requests += 1
            _Recorder.events += count
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


def start_server() -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1/events"


def reset_server() -> None:
    with _Recorder.lock:
        _Recorder.requests = _Recorder.events = 0


class _Null:
    def write(self, letters: Any) -> None:
        if letters:
            raise AssertionError(f"unexpected dead letters: {letters[0]}")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def ours(log_events: list[Any], url: str) -> tuple[int, int]:
    """Through the whole chain; returns (requests, events received)."""
    reset_server()
    with tempfile.TemporaryDirectory() as tmp:
        dispatcher = BulkEventDispatcher(SpoolWriter(tmp), max_buffer=len(log_events) + 1)
        for log_event in log_events:
            dispatcher.dispatch_event(log_event)
        dispatcher.close()
        reader = SpoolReader(tmp, group="bench", poll_interval=0.01)
        sink = OptimizelyBulkSink(_Null(), endpoint=url)
        forwarder = PayloadForwarder(reader, sink, commit_interval=0.2)

        def stop_when_caught_up() -> None:
            while reader.caught_up_seconds() < 0.2:
                time.sleep(0.02)
            reader.stop()

        threading.Thread(target=stop_when_caught_up, daemon=True).start()
        forwarder.run()
        sink.close()
        reader.close()
    return _Recorder.requests, _Recorder.events


def sink_throughput(records: list[bytes], url: str) -> tuple[float, int]:
    reset_server()
    sink = OptimizelyBulkSink(_Null(), endpoint=url)
    started = time.perf_counter()
    for i in range(0, len(records), 500):
        chunk = records[i:i + 500]
        sink.write_payload_records("bench", chunk, list(range(i, i + len(chunk))))
    assert sink.drain(timeout=300)
    elapsed = time.perf_counter() - started
    sink.close()
    return _Recorder.events / elapsed, _Recorder.requests


def row(name: str, events: int, requests: int, note: str = "") -> str:
    per_request = events / requests if requests else 0
    per_10k = requests * 10_000 / events if events else 0
    return f"  {name:<44} {events:>8,} {requests:>9,} {per_request:>12.1f} {per_10k:>14.1f}  {note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--throughput-events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    server, url = start_server()

    default = sdk_run(args.events, None)
    batch10 = sdk_run(args.events, 10)
    requests, received = ours(default.log_events, url)
    print(f"Requests to the Event API for {args.events:,} SDK user events (activate + track, one user each):")
    print(f"  {'':<44} {'events':>8} {'requests':>9} {'events/req':>12} {'req/10k ev':>14}")
    print(row("(a) SDK default (batch_size 1)", default.events(), len(default.log_events)))
    print(row("(b) BatchEventProcessor default (batch 10)", batch10.events(), len(batch10.log_events),
              "" if batch10.events() == default.events() else f"(SDK dropped {default.events() - batch10.events():,})"))
    print(row("(c) Rivulet bulk sink (1,000 visitors/req)", received, requests,
              "" if received == default.events() else "MISMATCH"))

    # Throughput: SDK-built LogEvents, repeated with fresh uuids per round is
    # unnecessary (the local server does not de-duplicate).
    base = [encode_payload_record(e.url, e.params) for e in default.log_events]
    records = (base * (args.throughput_events // len(base) + 1))[: args.throughput_events]
    runs = [sink_throughput(records, url) for _ in range(args.repeats)]
    rates = [r for r, _ in runs]
    size = sum(len(r) for r in records) / len(records)
    print(f"\nSink throughput against a local recording server ({len(records):,} single-visitor payloads, "
          f"{size:.0f} B each, {runs[0][1]} requests per run):")
    print(f"  median {statistics.median(rates):,.0f} events/s  (runs: {', '.join(f'{r:,.0f}' for r in rates)})")
    server.shutdown()


if __name__ == "__main__":
    main()
