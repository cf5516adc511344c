"""Daemons that say what they do: INFO start, ready, progress and stop lines,
checkpoints at DEBUG, an access log without credentials; and progress on a
file in bytes, with a total, percent and ETA (for gzip, the position in the
compressed file)."""

from __future__ import annotations

import base64
import gzip
import io
import os
import re
import signal
import subprocess
import sys
import urllib.request
from types import SimpleNamespace

from daemon.progress import FilePosition, JobProgress
from producers.file_source import open_maybe_gzip
from tests.conftest import ROOT, run_cli

SAMPLE = str(ROOT / "samples" / "events_sample.csv")


def test_consume_logs_start_ready_progress_and_stop_and_checkpoints_only_at_debug(tmp_path):
    spool = tmp_path / "spool"
    assert run_cli("produce", "--input", SAMPLE, "--to", f"spool:{spool}", "--data-dir", str(tmp_path)).returncode == 0
    env = {"RIVULET__LOGGING__PROGRESS_INTERVAL": '"0.5s"'}
    result = run_cli("--log-level", "INFO", "consume", "--from", f"spool:{spool}", "--drain", "1.5",
                     "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert re.search(rf"INFO rivulet: consume: starting: source spool:{re.escape(str(spool))}, profile .*local.toml "
                     r"\(backend local, data .*\), sinks dead-letters, raw-events, aggregates, counts, rollups "
                     r"customer_hourly, .*, lateness 10m", log), log
    assert "INFO rivulet: consume: ready" in log
    progress = re.findall(r"INFO rivulet.progress: consume: (\d+) records read, (\d+) counted, [\d,]+/s, "
                          r"(\d+) dead letters, lag [\d,]+ s", log)
    assert progress and progress[-1] == ("17", "11", "6"), log
    assert re.search(r"INFO rivulet: consume: stopped: 17 records read, 11 counted, .* 6 dead letters, lag .*; "
                     r"\d+ windows written in [\d.]+ s", log), log
    assert "checkpoint" not in log.lower().replace("last checkpoint", "")
    debug = run_cli("--log-level", "DEBUG", "consume", "--from", f"spool:{spool}", "--drain", "0.5",
                    "--data-dir", str(tmp_path / "again"))
    assert debug.returncode == 0
    assert re.search(rf"DEBUG consumers.fan_out: checkpoint spool:{re.escape(str(spool))} at position \d+", debug.stderr)


def test_a_file_run_logs_percent_and_eta_and_stays_quiet_at_the_default_level(tmp_path):
    lines = [f"c{i % 50},view,t{i},2021-03-01T00:{i // 3600 % 60:02d}:{i % 60:02d}Z" for i in range(60_000)]
    path = tmp_path / "events.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    env = {"RIVULET__LOGGING__PROGRESS_INTERVAL": '"0s"', "RIVULET__PIPELINE__BATCH_SIZE": "5000"}
    result = run_cli("--log-level", "INFO", "run", "--input", str(path), "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    percents = [float(p) for p in re.findall(r"records read, .*?, ([\d.]+)% of events.csv.gz", result.stderr)]
    assert percents and percents == sorted(percents) and percents[-1] == 100.0, result.stderr
    assert re.search(r"% of events.csv.gz, ETA \d\d:\d\d", result.stderr), result.stderr
    quiet = run_cli("run", "--input", str(path), "--data-dir", str(tmp_path / "quiet"))
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_file_position_is_bytes_of_the_file_as_stored_gzip_included(tmp_path):
    raw = b"".join(b"customer%d,view,t%d,2021-03-01T00:00:00Z\n" % (i, i) for i in range(100_000))
    plain, packed = tmp_path / "plain.csv", tmp_path / "packed.csv"
    plain.write_bytes(raw)
    packed.write_bytes(gzip.compress(raw, compresslevel=1))
    for path in (plain, packed):
        position = FilePosition(path)
        assert position.total == path.stat().st_size
        assert position.gzip == (path is packed)
        with open_maybe_gzip(path) as f:
            f.readlines(len(raw) // 2)
            done = position.position()
            assert done is not None and 0 < done < position.total  # part of the file, in stored bytes
            f.read()
            assert position.position() == position.total
        # closed: the descriptor is gone because the source read it all
        assert position.position() == position.total
    assert FilePosition(plain).position() is None  # not opened yet: unknown, not 0% or 100%


def test_the_bar_shows_total_percent_and_eta(tmp_path, monkeypatch):
    raw = b"".join(b"c%d,view,t%d,2021-03-01T00:00:00Z\n" % (i, i) for i in range(50_000))
    path = tmp_path / "events.csv.gz"
    path.write_bytes(gzip.compress(raw))
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    clock = iter(float(t) for t in range(100))
    progress = JobProgress("run", FilePosition(path), interval=3600, bar=True, clock=lambda: next(clock))
    summary = SimpleNamespace(read=25_000, valid=25_000, reasons={})
    with open_maybe_gzip(path) as f:
        f.readlines(len(raw) // 2)
        progress.update(summary)
        line = progress.line(summary)
    progress.close()
    size = path.stat().st_size
    assert re.search(r"events.csv.gz:\s+\d+%\|", screen.getvalue()), screen.getvalue()
    assert f"/{size / 1024:.0f}" in screen.getvalue() or "k/" in screen.getvalue() or "kB" in screen.getvalue()
    assert re.search(r"25,000 records read, 25,000 counted, .*, 0 dead letters, \d+\.\d% of events.csv.gz, ETA ", line)


def test_the_access_log_has_requests_but_no_credentials(tmp_path):
    env = {**os.environ, "RIVULET_DATA_DIR": str(tmp_path)}
    password = "correct-horse-battery"
    assert run_cli("users", "add", "alice", input=password + "\n", env=env).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_stream_processing.py"), "--log-level", "INFO", "serve", "--port", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"serving on (http://\S+)", line).group(1)
        token = base64.b64encode(f"alice:{password}".encode()).decode()
        for path, auth in (("/healthz", token), ("/readyz?token=s3cr3t-query-value", token),
                           ("/web/page_view/count", base64.b64encode(b"alice:wrong-password").decode())):
            request = urllib.request.Request(url + path, headers={"Authorization": f"Basic {auth}"})
            try:
                urllib.request.urlopen(request, timeout=10).read()
            except urllib.error.HTTPError:
                pass
    finally:
        proc.send_signal(signal.SIGTERM)
        _, log = proc.communicate(timeout=30)
    assert re.search(r"INFO rivulet.access: GET /healthz 200 [\d.]+ ms client=127.0.0.1 user=alice", log), log
    assert re.search(r"INFO rivulet.access: GET /readyz\?token=\*\*\* \d{3} ", log), log
    assert re.search(r"INFO rivulet.access: GET /web/page_view/count 401 [\d.]+ ms client=127.0.0.1\n", log), log
    assert "serve: starting" in log and "serve: ready on" in log and "serve: stopped" in log
    for secret in (password, "wrong-password", token, "s3cr3t-query-value", "Basic "):
        assert secret not in log, secret
