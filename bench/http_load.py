#!/usr/bin/env python3
"""Bounded load test of the HTTP collector on loopback.

Starts `serve` (spool transport) in its own process with a fresh data
directory, drives it with concurrent keep-alive connections posting batches
of events to POST /events for a fixed time, then stops it, runs
`consume --drain` and checks that the count store holds exactly the events
the collector accepted.

    python bench/http_load.py                        # 30 s, 64 connections, 100 events/POST
    python bench/http_load.py --duration 5 --connections 16

Prints accepted events/s, request latency p50/p99, 503s and errors, and the
count check; exits 1 if the counts differ or nothing was accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
CLI = [sys.executable, str(PROJECT / "run_stream_processing.py")]
USER, PASSWORD = "bench", "bench-password"


@dataclass
class Tally:
    requests: int = 0
    accepted: int = 0
    unavailable: int = 0  # 503: transport full
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


def env_for(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVULET")}
    env["RIVULET_DATA_DIR"] = str(data_dir)
    return env


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    add = subprocess.run([*CLI, "users", "add", USER], input=f"{PASSWORD}\n", text=True, capture_output=True, env=env_for(data_dir), cwd=PROJECT)
    if add.returncode:
        raise SystemExit(f"users add failed: {add.stderr.strip()}")
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(data_dir), cwd=PROJECT
    )
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"serving on (http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"serve did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, match.group(1)


def batch_body(size: int) -> bytes:
    # No event_id: the collector gives each event a new UUID, so resending the
    # same body makes new events. No timestamp: the receive time, in order.
    events = [{"event_type": "page_view" if i % 2 else "button_click", "url": f"https://example.com/p/{i % 10}",
               "button_id": f"b{i % 5}", "session_id": f"s{i % 37}"} for i in range(size)]
    return json.dumps(events).encode()


async def drive(url: str, connections: int, duration: float, body: bytes, client: str) -> tuple[Tally, float]:
    tally = Tally()
    stop_at = time.perf_counter() + duration
    worker = _raw_worker if client == "raw" else _httpx_worker
    began = time.perf_counter()
    if client == "raw":
        await asyncio.gather(*(worker(url, body, stop_at, tally) for _ in range(connections)))
    else:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        # TCP_NODELAY: httpx writes headers and body separately; without it
        # Nagle + delayed ACK add up to 40 ms to a request on loopback.
        transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        async with httpx.AsyncClient(base_url=url, auth=(USER, PASSWORD), transport=transport, timeout=60) as http:
            await asyncio.gather(*(worker(http, body, stop_at, tally) for _ in range(connections)))
    return tally, time.perf_counter() - began


def _count(tally: Tally, status: int, payload: bytes, started: float) -> float:
    """Record one answer; the seconds to back off (503's Retry-After) or 0."""
    tally.latencies.append(time.perf_counter() - started)
    tally.requests += 1
    if status == 200:
        tally.accepted += json.loads(payload)["accepted"]
    elif status == 503:
        tally.unavailable += 1
        return 1.0
    else:
        tally.errors += 1
    return 0.0


async def _httpx_worker(http: httpx.AsyncClient, body: bytes, stop_at: float, tally: Tally) -> None:
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            r = await http.post("/events", content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError:
            tally.errors += 1
            continue
        backoff = _count(tally, r.status_code, r.content, started)
        if backoff:
            await asyncio.sleep(float(r.headers.get("retry-after", backoff)))


async def _raw_worker(url: str, body: bytes, stop_at: float, tally: Tally) -> None:
    """A minimal HTTP/1.1 keep-alive client: one write per request, so the
    load generator costs little CPU next to the server it measures."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request = (
        f"POST /events HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Basic {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            payload = await reader.readexactly(length)
            if _count(tally, status, payload, started):
                await asyncio.sleep(1.0)
    except (OSError, asyncio.IncompleteReadError):
        tally.errors += 1
    finally:
        writer.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def counted(data_dir: Path) -> int:
    from consumers.sqlite_count_store import SqliteCountStore

    store = SqliteCountStore(data_dir / "counts.sqlite3")
    try:
        return sum(count for _, count in store.buckets("customer_hourly", (USER,), 0, 1 << 62))
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    parser.add_argument("--batch", type=int, default=100, help="events per POST (default 100)")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="raw: a minimal asyncio HTTP/1.1 client (default, cheap); httpx: httpx.AsyncClient")
    parser.add_argument("--data-dir", help="keep the data here (default: a temporary directory, removed)")
    args = parser.parse_args()
    if args.duration <= 0 or args.connections <= 0 or not 0 < args.batch <= 1000:
        parser.error("--duration and --connections must be positive, --batch 1..1000")

    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="rivulet-http-bench-"))
    proc, url = start_server(data_dir)
    try:
        print(f"serve: {url}  data: {data_dir}  load: {args.duration:g} s, {args.connections} connections ({args.client}), {args.batch} events/POST", flush=True)
        tally, elapsed = asyncio.run(drive(url, args.connections, args.duration, batch_body(args.batch), args.client))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    began = time.perf_counter()
    done = subprocess.run(
        [*CLI, "consume", "--from", f"spool:{data_dir / 'spool'}", "--drain", "0.5", "--json"],
        capture_output=True, text=True, env=env_for(data_dir), cwd=PROJECT,
    )
    drain_seconds = time.perf_counter() - began
    if done.returncode:
        print(f"consume failed: {done.stderr.strip()}")
        return 1
    total = counted(data_dir)
    ms = 1000.0
    print(f"requests           {tally.requests:,} ({tally.requests / elapsed:,.0f}/s)")
    print(f"accepted events    {tally.accepted:,}")
    print(f"accepted events/s  {tally.accepted / elapsed:,.0f}")
    print(f"latency p50        {percentile(tally.latencies, 0.50) * ms:.1f} ms")
    print(f"latency p99        {percentile(tally.latencies, 0.99) * ms:.1f} ms")
    print(f"503 (full)         {tally.unavailable:,}")
    print(f"errors             {tally.errors:,}")
    print(f"consume --drain    {drain_seconds:.1f} s")
    print(f"count store total  {total:,}")
    ok = total == tally.accepted and tally.accepted > 0
    print(f"counts match       {'yes' if ok else 'NO'}")
    if not args.data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
