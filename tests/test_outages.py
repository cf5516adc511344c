"""Outages: the AWS services refuse connections, then throttle, for a while in
the middle of a consume; the daemon waits, recovers by itself, and ends with
complete counts and every raw event in S3 exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.generate_events import generate
from tests.aws_fixtures import unique
from tests.conftest import ROOT, run_cli
from tests.fault_proxy import FaultProxy
from tests.test_aws_end_to_end import exported, oracle, s3_events

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


@pytest.mark.parametrize("fault", ["refuse", "throttle"])
def test_consume_rides_out_an_outage_of_every_aws_service(aws_env: str, tmp_path: Path, fault: str) -> None:
    lines = list(generate(1500, seed=17, customers=40, step_ms=4000))  # about 100 minutes of events
    source = tmp_path / "events.csv"
    source.write_text("\n".join(lines) + "\n")
    expected, valid_events, _ = oracle(lines)
    stream, bucket = unique("out"), unique("out-bkt")
    env = {
        "RIVULET__AWS__BUCKET": bucket,
        "RIVULET__AWS__COUNT_TABLE": unique("out-counts"),
        "RIVULET__AWS__CHECKPOINT_TABLE": unique("out-ckpt"),
        "RIVULET__AWS__SHARD_COUNT": "1",
        "RIVULET__AWS__GET_RECORDS_LIMIT": "200",  # many polls, so the outage lands mid-stream
        # Raw objects cut every second, as checkpoints cut them before: S3 puts
        # go on through the outage (with 3h of lateness no hour ever closes).
        "RIVULET__RAW_EVENTS__MAX_AGE": "1s",
    }
    if fault == "refuse":
        # botocore's own retries (5 attempts, up to ~15 s of backoff) could outlast the 6 s outage
        # unseen; with one retry the daemon's own retry layer meets it, and says so.
        env["RIVULET__AWS__MAX_ATTEMPTS"] = "2"
    data_dir = tmp_path / "data"
    produced = run_cli("produce", "--input", str(source), "--to", f"kinesis:{stream}", "--config", "config/aws.toml",
                       "--create-resources", "--data-dir", str(data_dir), env=env)
    assert produced.returncode == 0, produced.stderr

    proxy = FaultProxy(aws_env)
    try:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run_stream_processing.py"), "consume", "--from", f"kinesis:{stream}",
             "--drain", "3", "--lateness", "3h", "--json", "--config", "config/aws.toml", "--data-dir", str(data_dir)],
            cwd=ROOT, env={**os.environ, **env, "AWS_ENDPOINT_URL": proxy.endpoint},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not proxy.calls("Kinesis_20131202.GetRecords") and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        if fault == "refuse":
            proxy.refuse(seconds=6)
        else:
            # 10 in a row take the reader's backoff to its 10 s cap (0.2 s
            # doubling); more would only repeat the capped wait.
            for target in ("DynamoDB_20120810.UpdateItem", "Kinesis_20131202.GetRecords"):
                proxy.error(target, "ProvisionedThroughputExceededException", times=10)
            proxy.error("PUT /", "SlowDown", status=503, times=20)
        out, err = proc.communicate(timeout=180)
    finally:
        proxy.close()
    assert proc.returncode == 0, err
    assert "retrying" in err or "recovered" in err, err[-2000:]  # the outage was met, and ridden out
    assert json.loads(out)["late"] == 0
    for rollup, counts in expected.items():
        assert exported(rollup, env, data_dir) == counts, rollup
    in_s3 = s3_events(bucket)
    assert set(in_s3) == valid_events and max(in_s3.values()) == 1, err[-3000:]
