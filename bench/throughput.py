#!/usr/bin/env python3
"""Throughput and memory of the pipeline against a plain-loop baseline.

For each size it generates an `events-csv` file (seeded; mixed offsets, ~1%
duplicates re-sent later, ~0.1% malformed rows), then runs, each in its own
subprocess so peak RSS is per process, alternating and repeated:

  (a) bench/baseline_loop.py: the same job as one plain CPython loop;
  (b) the pipeline, `run --config bench/counts_only.toml` (same job: two
      rollups, counts to SQLite, dead letters to a file);
  (c) the pipeline with `--processes 2`;
  (d) the pipeline on the default local profile (adds raw events as gzip
      NDJSON objects and aggregate objects), for reference.

It checks that every side counted the same events, then prints events/s
(median of the repeats), the ratio to the baseline, and peak RSS.

    python bench/throughput.py --rows 1000000 --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate_events import generate  # noqa: E402


def run_with_rss(cmd: list[str]) -> tuple[float, float, str]:
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="rows per file (repeatable); default 1,000,000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--skip-full", action="store_true", help="skip (d), the default local profile")
    args = parser.parse_args()
    sizes = args.rows or [1_000_000]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rivulet-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, workdir {work}")
    for rows in sizes:
        path = work / f"events-{rows}.csv"
        if not path.exists():
            t = time.perf_counter()
            with open(path, "w") as f:
                for line in generate(rows):
                    f.write(line + "\n")
            print(f"generated {rows:,} rows in {time.perf_counter() - t:.1f}s")
        sides = {
            "baseline (plain loop)": lambda d: [py, "bench/baseline_loop.py", str(path), d],
            "pipeline": lambda d: [py, "run_stream_processing.py", "run", "--config", "bench/counts_only.toml",
                                   "--input", str(path), "--data-dir", d, "--json"],
            "pipeline --processes 2": lambda d: [py, "run_stream_processing.py", "run", "--config", "bench/counts_only.toml",
                                                 "--input", str(path), "--data-dir", d, "--json", "--processes", "2"],
        }
        if not args.skip_full:
            sides["pipeline, full local profile"] = lambda d: [py, "run_stream_processing.py", "run", "--input", str(path),
                                                                "--data-dir", d, "--json"]
        walls: dict[str, list[float]] = {name: [] for name in sides}
        rss: dict[str, list[float]] = {name: [] for name in sides}
        valid: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, make in sides.items():  # alternate the sides, so drift hits all of them
                data_dir = work / "data"
                shutil.rmtree(data_dir, ignore_errors=True)
                wall, peak, out = run_with_rss(make(str(data_dir)))
                walls[name].append(wall)
                rss[name].append(peak)
                valid[name] = json.loads(out.strip().splitlines()[-1])["valid"]
        if len(set(valid.values())) != 1:
            raise SystemExit(f"the sides disagree on valid events: {valid}")
        base = statistics.median(walls["baseline (plain loop)"])
        print(f"\n{rows:,} rows ({valid['pipeline']:,} valid), median of {args.repeat}, whole process:")
        print(f"  {'side':32} {'events/s':>12} {'vs baseline':>12} {'peak RSS MiB':>13}")
        for name in sides:
            wall = statistics.median(walls[name])
            print(f"  {name:32} {rows / wall:>12,.0f} {base / wall:>11.2f}x {max(rss[name]):>13.1f}")


if __name__ == "__main__":
    main()
