#!/usr/bin/env python3
"""Load test of the HTTP collector and the bucketer on loopback, with `wrk`.

For each connection count it runs each server in its own process with a
fresh data directory. The bare framework and the collector take turns
(`--slices`, 3 by default: bare, collector, bare, ...; a fresh collector and
spool per slice), so a change in the shared machine's load hits both; each
gets `--duration` in all:

1. **bare**: FastAPI on the same uvicorn (one worker, uvloop, httptools) with
   one route, `POST /events`, that validates the same body with pydantic
   (`list[GenericEvent]`, the collector's own model) and does nothing else;
2. **collector**: `serve` on a spool. After the load it stops the server,
   runs `consume --drain` and checks for loss: the count store's total must
   equal the records on the spool and the events the server answered
   "Received" for (its `rivulet_http_events_accepted_total`), which must
   cover every 200 the load generator read (a request cut by the end of a
   slice may be accepted without its answer being read);
3. **bucketer** (`--bucketer`): `serve` with a datafile in which everyone is
   bucketed, `GET /bucketer?e=...&u=<a new user each time>`; every decision
   sends an impression through the bulk dispatcher to a spool, and the
   impressions there must equal the decisions.

`wrk` (Debian package `wrk`) is the load generator: a C program, so the
client costs the 2-core machine little. It prints accepted events/s,
decisions/s, p50, p99, p99.9 (of a sliced run: the worst slice's), and the
collector's ratio to the bare framework.

    python bench/http_load.py                                # 30 s, 32 connections, 100 events/POST
    python bench/http_load.py --connections 16,32,64 --bucketer
    python bench/http_load.py --duration 5 --connections 16  # short run

Exits 1 when a count check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, str(PROJECT / "run_stream_processing.py")]
USER, PASSWORD = "bench", "bench-password"
DATAFILE = PROJECT / "tests" / "fixtures" / "optimizely" / "datafile_rev7.json"
EXPERIMENT = "checkout_flow_experiment"

# Counts 200s (and the "accepted" of each), other statuses and the latency
# percentiles, summed over wrk's threads; printed as one JSON line.
_REPORT_LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; accepted = 0; other = 0 end
function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    local n = string.match(body, '"accepted":(%d+)')
    accepted = accepted + (tonumber(n) or 1)
  else
    other = other + 1
  end
end
function done(summary, latency, requests)
  local o, a, x = 0, 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); a = a + t:get("accepted"); x = x + t:get("other") end
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "ok": %d, "accepted": %d, "other": %d, "socket_errors": %d, ' ..
    '"duration_us": %d, "p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
    summary.requests, o, a, x, e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""

_POST_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic %(token)s"
local f = io.open("%(body)s", "rb"); wrk.body = f:read("*a"); f:close()
"""

# Each request a new set of event_ids: "@@" in the body becomes a string
# unique to the thread and the request.
_POST_IDS_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic %(token)s"
local f = io.open("%(body)s", "rb"); local template = f:read("*a"); f:close()
local n = 0
local tag = tostring(math.random(1, 1000000000))
request = function()
  n = n + 1
  local body = string.gsub(template, "@@", tag .. "-" .. n)
  return wrk.format(nil, nil, nil, body)
end
"""

_BUCKET_LUA = r"""
wrk.headers["Authorization"] = "Basic %(token)s"
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/bucketer?e=%(experiment)s&u=u" .. n .. "-" .. math.random(1, 1000000000) .. "&a=tier:%%22platinum%%22")
end
"""


@dataclass
class Run:
    name: str
    requests: int
    ok: int
    accepted: int
    other: int
    socket_errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    check: str = ""
    passed: bool = True

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


def env_for(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVULET") and k != "OPTIMIZELY_DATAFILE"}
    env.update(RIVULET_DATA_DIR=str(data_dir), PYTHONPATH=str(PROJECT), **extra)
    return env


def start(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=PROJECT)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"serving on (http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"{cmd[-3:]} did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, match.group(1)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_serve(data_dir: Path, **env: str) -> tuple[subprocess.Popen[str], str]:
    add = subprocess.run([*CLI, "users", "add", USER], input=f"{PASSWORD}\n", text=True, capture_output=True,
                         env=env_for(data_dir), cwd=PROJECT)
    if add.returncode:
        raise SystemExit(f"users add failed: {add.stderr.strip()}")
    return start([*CLI, "serve", "--port", "0"], env_for(data_dir, **env))


def wrk(url: str, script: str, connections: int, seconds: float, work: Path, threads: int = 2) -> dict[str, Any]:
    path = work / "script.lua"
    path.write_text(script + _REPORT_LUA)
    # wrk takes whole seconds only ("-d3.33s" is a usage error): a slice of
    # --duration / --slices is rounded (the rates use wrk's measured time).
    done = subprocess.run(
        ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(path), url],
        capture_output=True, text=True,
    )
    match = re.search(r"^RESULT (\{.*\})$", done.stdout, re.M)
    if done.returncode or not match:
        raise SystemExit(f"wrk failed: {done.stdout}{done.stderr}")
    return json.loads(match.group(1))


def as_run(name: str, raw: dict[str, Any], check: str = "", passed: bool = True) -> Run:
    return Run(name, raw["requests"], raw["ok"], raw["accepted"], raw["other"], raw["socket_errors"], raw["duration_us"] / 1e6,
               raw["p50_us"] / 1000, raw["p99_us"] / 1000, raw["p999_us"] / 1000, check, passed)


def batch_body(size: int, event_ids: bool = False) -> bytes:
    # No timestamp: the receive time. Without event_ids every event is new;
    # with them, "@@" is made unique per request by the wrk script.
    events = [{"event_type": "page_view" if i % 2 else "button_click", "url": f"https://example.com/p/{i % 10}",
               "button_id": f"b{i % 5}", "session_id": f"s{i % 37}"} for i in range(size)]
    if event_ids:
        for i, event in enumerate(events):
            event["event_id"] = f"@@-{i}"
    return json.dumps(events).encode()


def token() -> str:
    return b64encode(f"{USER}:{PASSWORD}".encode()).decode()


# -- 1. the bare framework --------------------------------------------------------------


def bare_app() -> Any:
    """FastAPI, one route, pydantic validation of the same body with the same
    rules (the collector's own `GenericEvent` model: lengths, no control
    characters, strict types), nothing else: no auth, no records, no transport."""
    from fastapi import FastAPI

    from service.collector import GenericEvent

    app = FastAPI()

    async def events(batch):  # type: ignore[no-untyped-def]
        return {"message": "Received", "accepted": len(batch)}

    # Real annotations (this module's are strings).
    events.__annotations__ = {"batch": list[GenericEvent], "return": dict[str, Any]}
    app.post("/events")(events)
    return app


def serve_bare() -> None:
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(f"serving on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(bare_app(), access_log=False, log_config=None, lifespan="off")).run(sockets=[sock])


def start_bare(work: Path) -> tuple[subprocess.Popen[str], str]:
    return start([sys.executable, __file__, "--serve-bare"], env_for(work))


# -- 2. the collector ------------------------------------------------------------------------


def server_accepted(url: str) -> int:
    request = urllib.request.Request(f"{url}/metrics")
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    return sum(int(float(v)) for v in re.findall(r'^rivulet_http_events_accepted_total\{route="/events"\} (\S+)$', text, re.M))


def counted(data_dir: Path) -> int:
    sys.path.insert(0, str(PROJECT))
    from consumers.sqlite_count_store import SqliteCountStore

    store = SqliteCountStore(data_dir / "counts.sqlite3")
    try:
        return sum(count for _, count in store.buckets("customer_hourly", (USER,), 0, 1 << 62))
    finally:
        store.close()


def merge(name: str, slices: list[dict[str, Any]], check: str = "", passed: bool = True) -> Run:
    """One run from its slices: counts and time summed, each percentile the
    worst slice's (an upper bound, not an average)."""
    total = {key: sum(raw[key] for raw in slices) for key in ("requests", "ok", "accepted", "other", "socket_errors", "duration_us")}
    for key in ("p50_us", "p99_us", "p999_us"):
        total[key] = max(raw[key] for raw in slices)
    return as_run(name, total, check, passed)


def run_side_by_side(args: argparse.Namespace, connections: int, work: Path, body_path: Path) -> tuple[Run, Run]:
    """The bare framework and the collector loaded in alternating slices
    (`--slices`), so that a change of the machine's load hits both. Each
    collector slice gets a fresh `serve` and spool: nothing drains the spool
    during the load, and one at 200k events/s would reach the spool's bound of
    5,000,000 pending records (then 503s, as designed) within 25 s."""
    bare_proc, bare_url = start_bare(work)
    script = _POST_IDS_LUA if args.event_ids else _POST_LUA
    bare_slices: list[dict[str, Any]] = []
    slices: list[dict[str, Any]] = []
    seconds = args.duration / args.slices
    on_server = answered = 0
    data_dirs = []
    try:
        for number in range(args.slices):
            data_dir = work / f"collector-{connections}-{number}"
            data_dirs.append(data_dir)
            proc, url = start_serve(data_dir)
            try:
                bare_slices.append(wrk(f"{bare_url}/events", _POST_LUA % {"token": token(), "body": body_path}, connections, seconds, work))
                slices.append(wrk(f"{url}/events", script % {"token": token(), "body": body_path}, connections, seconds, work))
                time.sleep(0.5)  # requests cut by the end of a slice finish on the server
                with sqlite3.connect(data_dir / "spool" / "spool.sqlite3") as conn:
                    on_server += conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]  # what it put on the spool
                answered += server_accepted(url)
            finally:
                stop(proc)
    finally:
        stop(bare_proc)
    bare = merge("bare FastAPI + pydantic", bare_slices)
    read = sum(raw["accepted"] for raw in slices)
    began = time.perf_counter()
    total = 0
    for data_dir in data_dirs:
        done = subprocess.run([*CLI, "consume", "--from", f"spool:{data_dir / 'spool'}", "--drain", "0.5", "--json"],
                              capture_output=True, text=True, env=env_for(data_dir), cwd=PROJECT)
        if done.returncode:
            raise SystemExit(f"consume failed: {done.stderr.strip()}")
        total += counted(data_dir)
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    ok = total == on_server == answered and read <= answered <= read + args.slices * connections * args.batch
    check = (f"store {total:,} = spool {on_server:,} = answered Received {answered:,} >= client read {read:,}: "
             f"{'ok' if ok else 'LOSS OR MISMATCH'} (drain {time.perf_counter() - began:.1f} s)")
    collector = merge("collector (serve, spool)" + (", event_ids" if args.event_ids else ""), slices, check, ok)
    return bare, collector


# -- 3. the bucketer -------------------------------------------------------------------------


def run_bucketer(args: argparse.Namespace, connections: int, work: Path) -> Run:
    data_dir = work / f"bucketer-{connections}"
    data_dir.mkdir(parents=True, exist_ok=True)
    datafile = json.loads(DATAFILE.read_text())
    for experiment in datafile["experiments"]:
        if experiment["key"] == EXPERIMENT:  # everyone in: one impression per decision
            experiment["trafficAllocation"] = [{"entityId": v["id"], "endOfRange": 10000 * (i + 1) // len(experiment["variations"])}
                                               for i, v in enumerate(experiment["variations"])]
    path = data_dir / "datafile.json"
    path.write_text(json.dumps(datafile))
    proc, url = start_serve(data_dir, OPTIMIZELY_DATAFILE=str(path))
    try:
        raw = wrk(f"{url}/bucketer", _BUCKET_LUA % {"token": token(), "experiment": EXPERIMENT}, connections, args.duration, work)
        time.sleep(0.5)
    finally:
        stop(proc)  # the dispatcher sends what it buffered at exit
    spool = data_dir / "optimizely-spool" / "spool.sqlite3"
    with sqlite3.connect(spool) as conn:
        (impressions,) = conn.execute("SELECT COUNT(*) FROM records").fetchone()
    ok = raw["ok"] <= impressions <= raw["ok"] + connections
    check = f"impressions in the spool {impressions:,} for {raw['ok']:,} decisions read: {'ok' if ok else 'MISMATCH'}"
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return as_run("bucketer (activate, bulk dispatch)", raw, check, ok)


# -- main -----------------------------------------------------------------------------------


def show(run: Run, unit: str) -> None:
    print(f"  {run.name:<36} {run.rate:>10,.0f} {unit}/s  p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms  "
          f"p99.9 {run.p999_ms:6.1f} ms  ({run.requests:,} requests, {run.other:,} not 200, {run.socket_errors} socket errors)")
    if run.check:
        print(f"    {run.check}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per server (default 30)")
    parser.add_argument("--connections", default="32", help="comma-separated connection counts (default 32)")
    parser.add_argument("--batch", type=int, default=100, help="events per POST (default 100)")
    parser.add_argument("--slices", type=int, default=3,
                        help="the bare framework and the collector take turns this many times (default 3)")
    parser.add_argument("--event-ids", action="store_true",
                        help="every event of the collector run has a new event_id (the idempotency ledger's cost)")
    parser.add_argument("--bucketer", action="store_true", help="also load the bucketer")
    parser.add_argument("--no-collector", action="store_true", help="only the bucketer")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare()
        return 0
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    counts = [int(c) for c in args.connections.split(",")]
    if args.duration <= 0 or not 0 < args.batch <= 1000 or min(counts) <= 0 or args.slices < 1:
        parser.error("--duration, --connections and --slices must be positive, --batch 1..1000")

    work = Path(tempfile.mkdtemp(prefix="rivulet-http-bench-"))
    body_path = work / "body.json"
    body_path.write_bytes(batch_body(args.batch, args.event_ids))
    failed = False
    print(f"load: wrk, {args.duration:g} s per server, {args.batch} events per POST; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores")
    for connections in counts:
        print(f"{connections} connections")
        if not args.no_collector:
            bare, collector = run_side_by_side(args, connections, work, body_path)
            show(bare, "events")
            show(collector, "events")
            ratio = collector.rate / bare.rate if bare.rate else 0.0
            print(f"    collector / bare framework: {ratio:.2f}x")
            failed |= not collector.passed
        if args.bucketer:
            bucketer = run_bucketer(args, connections, work)
            show(bucketer, "decisions")
            failed |= not bucketer.passed
        print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
