#!/usr/bin/env python3
"""`consume --drain 5` of the 50k-row sparse file against moto, alternated
between variants: issue 12's single-worker target (30 s).

    python bench/aws_drain.py                        # the default settings, 3 runs
    python bench/aws_drain.py --pairs 3 \\
        --variant "threads4=RIVULET__AWS__WRITE_THREADS=4"   # A/B against the default
    python bench/aws_drain.py --variant base= --variant-checkout ../base   # this code against another checkout's

Kinesis, DynamoDB and S3 are moto servers of their own (each its own
process, as the target test runs them: tests/aws_fixtures.py MotoServices).
The file is produced once; each run is a `consume` process of its own with a
fresh count table, lease table and bucket, so every run reads the whole
stream from TRIM_HORIZON and writes every window and object again. Runs are
alternated (default, variant, default, ...), and the median of each side and
their ratio are printed, with each run's moto CPU seconds per service (the
machine's speed drifts: compare runs next to each other).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate_events import generate_sparse  # noqa: E402
from tests.aws_fixtures import MotoServices  # noqa: E402


def cli(args: list[str], env: dict[str, str], checkout: Path = ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, str(checkout / "run_stream_processing.py")]
    result = subprocess.run(command + args, cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args[:3])} failed: {result.stderr.strip().splitlines()[-1:]}")
    return result


def resources(env: dict[str, str]) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {**env, "RIVULET__AWS__BUCKET": f"drain-{tag}", "RIVULET__AWS__COUNT_TABLE": f"drain-counts-{tag}",
            "RIVULET__AWS__CHECKPOINT_TABLE": f"drain-leases-{tag}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--variant", help="NAME=VAR=VALUE[,VAR=VALUE]: environment of the B side")
    parser.add_argument("--variant-checkout", type=Path, default=ROOT,
                        help="the B side runs this checkout's run_stream_processing.py (another commit)")
    args = parser.parse_args()
    variants: list[tuple[str, dict[str, str], Path]] = [("default", {}, ROOT)]
    if args.variant:
        name, _, assignments = args.variant.partition("=")
        extra = dict(a.split("=", 1) for a in assignments.split(",") if a)
        variants.append((name, extra, args.variant_checkout.resolve()))
    services = MotoServices()
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RIVULET__")}
        base.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                     "RIVULET__AWS__SHARD_COUNT": "2"})
        base.pop("PYTHONDONTWRITEBYTECODE", None)  # each run would compile every module again
        for service, endpoint in services.endpoints.items():
            base[f"AWS_ENDPOINT_URL_{service.upper()}"] = endpoint
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "sparse.csv"
            source.write_text("\n".join(generate_sparse(args.rows)) + "\n")
            stream = f"drain-{uuid.uuid4().hex[:8]}"
            cli(["produce", "--input", str(source), "--to", f"kinesis:{stream}", "--config", "config/aws.toml",
                 "--create-resources", "--data-dir", f"{tmp}/produce"], resources(base))
            walls: dict[str, list[float]] = {name: [] for name, _, _ in variants}
            for run in range(args.pairs):
                for name, extra, checkout in variants:
                    env = resources({**base, **extra})
                    before = services.cpu_seconds() or {}
                    started = time.monotonic()
                    result = cli(["consume", "--from", f"kinesis:{stream}", "--drain", "5", "--json", "--config",
                                  "config/aws.toml", "--create-resources", "--data-dir", f"{tmp}/{name}-{run}"], env, checkout)
                    took = time.monotonic() - started
                    after = services.cpu_seconds() or {}
                    summary = json.loads(result.stdout)
                    walls[name].append(took)
                    moto = ", ".join(f"{s} {after[s] - before[s]:.1f}" for s in after)
                    print(f"{name:>12} run {run + 1}: {took:5.1f} s, {summary['valid']:,} valid "
                          f"(moto CPU s: {moto}; load {os.getloadavg()[0]:.1f})", flush=True)
        medians = {name: statistics.median(w) for name, w in walls.items()}
        for name, median in medians.items():
            print(f"{name:>12}: median {median:.1f} s of {len(walls[name])} runs, {args.rows / median:,.0f} events/s")
        if len(variants) == 2:
            a, b = (medians[name] for name, _, _ in variants)
            print(f"ratio {variants[1][0]} / default: {a / b:.2f}x faster")
    finally:
        services.close()


if __name__ == "__main__":
    main()
