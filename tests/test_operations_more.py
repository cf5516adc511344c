"""More operations: serve under systemd (sd_notify, SIGHUP, SIGTERM), log
redaction, and replaying dead letters."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from daemon.logs import JsonFormatter, RedactingFilter, redact
from tests.conftest import FIXTURES, ROOT, run_cli


def test_secrets_are_redacted_from_log_lines():
    line = ("connecting with aws_secret_access_key=wJalrXUtnFEMI/K7MDENG key AKIAIOSFODNN7EXAMPLE "
            "Authorization: Basic dXNlcjpwYXNzd29yZA== password: hunter2 token=abc.def")
    cleaned = redact(line)
    for secret in ("wJalrXUtnFEMI/K7MDENG", "AKIAIOSFODNN7EXAMPLE", "dXNlcjpwYXNzd29yZA==", "hunter2", "abc.def"):
        assert secret not in cleaned
    assert "connecting with" in cleaned

    record = logging.LogRecord("botocore", logging.WARNING, __file__, 1, "sent %s", ("password=s3cret",), None)
    RedactingFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "sent password=***" and entry["level"] == "warning" and entry["logger"] == "botocore"


def test_replay_dead_letter_resends_what_parses_now_and_counts_the_rest(tmp_path):
    sample = FIXTURES / "test_events_sample.csv"
    assert run_cli("run", "--input", str(sample), "--data-dir", str(tmp_path)).returncode == 0
    dead = tmp_path / "dead_letters.ndjson"
    spool = f"spool:{tmp_path / 'spool'}"
    result = run_cli("replay-dead-letter", str(dead), "--to", spool, "--data-dir", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    assert "replayed: 6, still failing: 2, skipped: 0" in result.stdout
    # The late ones, counted with a lateness that keeps them, complete the hours.
    consumed = run_cli("consume", "--from", spool, "--drain", "0.5", "--data-dir", str(tmp_path), "--lateness", "3h", "--json")
    assert json.loads(consumed.stdout)["valid"] == 6
    missing = run_cli("replay-dead-letter", str(tmp_path / "nope.ndjson"), "--to", spool)
    assert missing.returncode == 2 and "dead-letter file not found" in missing.stderr


def test_serve_speaks_sd_notify_reloads_on_sighup_and_stops_on_sigterm(tmp_path):
    address = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(20)
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000", "RIVULET_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_stream_processing.py"), "--log-level", "WARNING",
                             "serve", "--port", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        messages = [server.recv(4096).decode()]
        assert messages[0].startswith("READY=1")
        deadline = time.time() + 10
        while time.time() < deadline and not any("WATCHDOG=1" in m for m in messages):
            messages.append(server.recv(4096).decode())
        assert any("WATCHDOG=1" in m for m in messages)
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None  # SIGHUP reloads, it does not stop
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        while True:
            try:
                server.settimeout(0.5)
                messages.append(server.recv(4096).decode())
            except socket.timeout:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    assert proc.returncode == 0, err
    assert "SIGHUP:" in err and "credentials reloaded" in err
    assert any(m.startswith("STOPPING=1") for m in messages)
