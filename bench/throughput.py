#!/usr/bin/env python3
"""Throughput, memory and objects written: the pipeline against the plain loop.

    python bench/throughput.py                                  # 1M sparse rows, 3 pairs
    python bench/throughput.py --shape dense --rows 1000000 --rows 10000000 --pairs 3
    python bench/throughput.py --project /tmp/snapshot          # another checkout's pipeline
    python bench/throughput.py --compare /tmp/before --only "run counts_only"   # before/after, alternated

For each `--rows` it generates an `events-csv` file with
bench/generate_events.py (`--shape sparse|dense`, seeded, with a header;
cached in the work dir), then runs every side as its own process on it, with
a fresh data dir each time:

  plain loop                     bench/baseline_loop.py: the counts-only job as one CPython loop
  run (config/local.toml)        `run` on the default profile (raw events, aggregates, SQLite, dead letters)
  run counts_only                `run --config bench/counts_only.toml`: the plain loop's job
  run counts_only --processes 2  the same in two processes

Every side runs once unmeasured first (bytecode cached, as in a user's
install; the input file in the page cache). One pair (round) runs each side once; the order is reversed every other round
so drift on a shared machine hits every side alike. Per side: wall seconds
(median, min, max over the rounds), input rows per second at the median, the
speed relative to the plain loop (plain wall / side wall, per round, then the
median), CPU seconds (user + system of the process and its children, from
`os.wait4`), peak RSS (/usr/bin/time -f %M, else `ru_maxrss`: the largest
single process; with `--processes 2` also the peak of the sum over the
process tree, sampled from /proc every 50 ms), and the files written: objects
under `store/` and all files in the data dir, counted before the dir is
deleted. It checks that every side counted the same valid events, and in the
first round that the plain loop's windows equal the pipeline's `export`
(bench/baseline_loop.py's check).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PLAIN = "plain loop"


TIME = "/usr/bin/time"

# Each side runs as a user's install does: bytecode cached. A shell with
# PYTHONDONTWRITEBYTECODE set would recompile every imported module (polars
# among them) in every run, ~0.3 s of start-up the plain loop barely pays.
SIDE_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def tree_rss_kib(pid: int, skip_root: bool = False) -> int:
    """Resident KiB of a process's descendants and (unless skip_root) the
    process itself, from /proc; 0 when it is gone."""
    total, todo = 0, [(pid, skip_root)]
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    while todo:
        p, skip = todo.pop()
        try:
            if not skip:
                with open(f"/proc/{p}/statm") as f:
                    total += int(f.read().split()[1]) * page_kib
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend((int(c), False) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


def run_measured(cmd: list[str], cwd: Path) -> dict:
    """Run one side; wall and CPU seconds, peak RSS, the summary it printed.

    Peak RSS comes from /usr/bin/time -f %M when present: `ru_maxrss` of a
    child this process forked starts at this process's own RSS (fork copies
    the accounting), so os.wait4 alone would floor every side at ours."""
    wrapped = os.access(TIME, os.X_OK)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("w+", suffix=".rss") as rss_file:
        if wrapped:
            cmd = [TIME, "-f", "%M", "-o", rss_file.name, *cmd]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, env=SIDE_ENV)
        peak_tree = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak_tree[0] = max(peak_tree[0], tree_rss_kib(proc.pid, skip_root=wrapped))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, error = out.read(), err.read()
        rss_kib = usage.ru_maxrss
        if wrapped:
            rss_file.seek(0)
            rss_kib = int(rss_file.read().split()[-1])
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{error[-3000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mib": rss_kib / 1024,
            "tree_rss_mib": peak_tree[0] / 1024, "summary": json.loads(text.strip().splitlines()[-1])}


def count_files(data_dir: Path) -> tuple[int, int]:
    """(objects under store/, all files under the data dir)."""
    store = sum(len(files) for _, _, files in os.walk(data_dir / "store"))
    every = sum(len(files) for _, _, files in os.walk(data_dir))
    return store, every


def sides(py: str, project: Path, path: Path) -> dict[str, callable]:
    run = [py, str(project / "run_stream_processing.py"), "run", "--input", str(path), "--json"]
    counts_only = ["--config", str(project / "bench" / "counts_only.toml")]
    return {
        PLAIN: lambda d: [py, str(BENCH / "baseline_loop.py"), str(path), d],
        "run (config/local.toml)": lambda d: [*run, "--config", str(project / "config" / "local.toml"), "--data-dir", d],
        "run counts_only": lambda d: [*run, *counts_only, "--data-dir", d],
        "run counts_only --processes 2": lambda d: [*run, *counts_only, "--data-dir", d, "--processes", "2"],
    }


def measure(args, rows: int, project: Path, work: Path) -> None:
    """Generate (or reuse) the file, run the rounds, print the table."""
    from bench.baseline_loop import check
    from bench.generate_events import write_events

    path = work / f"events-{args.shape}-{rows}-{args.seed if args.seed is not None else 'default'}.csv"
    if not path.exists():
        started = time.perf_counter()
        write_events(str(path) + ".part", rows, args.shape, args.seed, header=True)
        os.replace(str(path) + ".part", path)
        print(f"generated {rows:,} {args.shape} rows in {time.perf_counter() - started:.1f}s: {path}")

    all_sides = sides(sys.executable, project, path)
    if args.only:
        all_sides = {name: make for name, make in all_sides.items() if name == PLAIN or name in args.only}
    if args.compare:  # the same sides of another checkout, in the same rounds
        other = Path(args.compare).resolve()
        all_sides.update({f"{name} [{other.name}]": make for name, make in sides(sys.executable, other, path).items()
                          if name != PLAIN and name in all_sides})
    names = list(all_sides)
    results: dict[str, list[dict]] = {name: [] for name in names}
    spent: list[Path] = []  # data dirs, deleted after the rounds (see `remove_later`)

    def remove_later(data_dir: Path) -> None:
        # ext4 does not hand out an inode freed in the last minutes before it
        # has skipped it, reading its inode table block, in every allocation
        # that scans past it. A default run creates ~4,400 files and
        # directories; deleting them just before the next side runs made that
        # side's mkdir and create spend 1 to 3 s of system time skipping them
        # (perf: `recently_deleted` under ext4_mkdir and ext4_create, 45% of
        # the run's CPU). A user's run does not start seconds after another
        # run's store was deleted, so the dirs are kept until all rounds ran.
        if args.delete_between:
            shutil.rmtree(data_dir)
        else:
            spent.append(data_dir)
    # One unmeasured run of each side first: bytecode caches written, the
    # input file in the page cache for everyone.
    for name in names:
        data_dir = Path(tempfile.mkdtemp(prefix="warm-", dir=work))
        run_measured(all_sides[name](str(data_dir)), project)
        remove_later(data_dir)
    load_before = os.getloadavg()
    for round_ in range(args.pairs):
        order = names if round_ % 2 == 0 else names[::-1]
        plain_out = None
        for name in order:
            data_dir = Path(tempfile.mkdtemp(prefix="side-", dir=work))
            result = run_measured(all_sides[name](str(data_dir)), project)
            result["store"], result["files"] = count_files(data_dir)
            results[name].append(result)
            print(f"  {rows:,} round {round_ + 1} {name}: {result['wall']:.2f}s wall, {result['cpu']:.2f}s CPU, "
                  f"{result['rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
            if name == PLAIN:
                plain_out = data_dir
                continue
            if round_ == 0 and name == "run counts_only" and plain_out and not args.no_check:
                with contextlib.redirect_stdout(sys.stderr):
                    result["check"] = check(str(plain_out), str(data_dir), str(project / "bench" / "counts_only.toml"),
                                            root=str(project))
            remove_later(data_dir)
        if plain_out:
            remove_later(plain_out)
    load_after = os.getloadavg()
    if args.keep_data:
        print(f"kept {len(spent)} data dirs under {work} (side-*, warm-*)", file=sys.stderr)
    else:
        for data_dir in spent:
            shutil.rmtree(data_dir)

    valid = {name: {r["summary"]["valid"] for r in runs} for name, runs in results.items()}
    if len(set().union(*valid.values())) != 1:
        raise SystemExit(f"the sides disagree on valid events: {valid}")
    summary = results[names[0]][0]["summary"]
    checked = [r["check"] for runs in results.values() for r in runs if "check" in r]

    print(f"\n{args.shape} workload, {rows:,} rows ({summary['valid']:,} valid, {summary['duplicates']:,} "
          f"duplicates, {summary['late']:,} late, {summary['malformed']:,} malformed), {args.pairs} pairs; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load_before[0]:.1f} -> "
          f"{load_after[0]:.1f}; project {project}")
    if checked:
        print(f"plain loop windows == pipeline export (counts_only, round 1): {'yes' if all(checked) else 'NO'}")
    print()
    print("| side | wall s median | min | max | events/s | × plain loop | CPU s | peak RSS MiB | store/ objects | files |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    plain_walls = [r["wall"] for r in results[PLAIN]]
    for name in names:
        runs = results[name]
        walls = [r["wall"] for r in runs]
        median = statistics.median(walls)
        ratio = statistics.median(p / w for p, w in zip(plain_walls, walls))
        rss = max(r["rss_mib"] for r in runs)
        tree = max(r["tree_rss_mib"] for r in runs)
        rss_text = f"{rss:.0f}" + (f" (sum {tree:.0f})" if "processes 2" in name else "")
        files = sorted({r["files"] for r in runs})
        stores = sorted({r["store"] for r in runs})
        print(f"| {name} | {median:.2f} | {min(walls):.2f} | {max(walls):.2f} | {rows / median:,.0f} | {ratio:.2f}× "
              f"| {statistics.median(r['cpu'] for r in runs):.2f} | {rss_text} | {'/'.join(map(str, stores))} "
              f"| {'/'.join(map(str, files))} |")
    print("\nevents/s: input rows per wall second (median). × plain loop: plain wall / side wall in the same round, "
          "median over rounds (above 1 = faster than the plain loop). peak RSS: the largest over the rounds.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="rows per file (repeatable); default 1,000,000")
    parser.add_argument("--shape", choices=["sparse", "dense"], default="sparse")
    parser.add_argument("--seed", type=int, default=None, help="generator seed (default: the shape's)")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of all sides (at least 3 for a median)")
    parser.add_argument("--workdir", default=None, help="where the input file is cached (default: a temp dir)")
    parser.add_argument("--project", default=str(BENCH.parent), help="the checkout whose pipeline runs")
    parser.add_argument("--only", action="append", help="run only these sides (besides the plain loop)")
    parser.add_argument("--compare", metavar="PROJECT",
                        help="also run the same sides of another checkout (a before/after in the same rounds)")
    parser.add_argument("--no-check", action="store_true", help="skip comparing the plain loop with `export`")
    # Where the sides' data dirs go: deleted after all rounds (the default), or
    # one of these.
    cleanup = parser.add_mutually_exclusive_group()
    cleanup.add_argument("--delete-between", action="store_true",
                        help="delete each side's data dir right after it ran, not after all rounds (slows the next "
                             "side's file creation on ext4: see measure())")
    cleanup.add_argument("--keep-data", action="store_true",
                        help="keep every side's data dir in the work dir: a bench run right after another one then "
                             "does not pay for the other's deletions either")
    args = parser.parse_args()
    if args.pairs < 1:
        raise SystemExit("--pairs must be at least 1")
    project = Path(args.project).resolve()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rivulet-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(BENCH.parent))
    for rows in args.rows or [1_000_000]:
        measure(args, rows, project, work)


if __name__ == "__main__":
    main()
