"""Issue 13, item 5: one reader per (spool, consumer group) at a time.

Two `consume` processes on one spool and group used to both run: with one
data directory each read everything (dead letters doubled), with two the
second silently missed what the first had committed. The second now fails at
once with one line; the lock goes with the first reader (close, SIGTERM or
SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from producers.spool import SpoolBusy, SpoolReader, SpoolWriter
from tests.conftest import ROOT, run_cli


def test_a_second_reader_of_a_group_fails_until_the_first_closes(tmp_path):
    with SpoolWriter(tmp_path) as writer:
        writer.send([b"a", b"b"])
    first = SpoolReader(tmp_path, group="g")
    with pytest.raises(SpoolBusy, match=rf"group 'g' is already being read by process {os.getpid()}"):
        SpoolReader(tmp_path, group="g")
    other = SpoolReader(tmp_path, group="h")  # another group reads on its own
    other.close()
    first.close()
    again = SpoolReader(tmp_path, group="g")
    assert again.committed() == 1
    again.close()


def _start_consumer(spool: Path, data_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_stream_processing.py"), "consume", "--from", f"spool:{spool}",
         "--data-dir", str(data_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    locks = spool / "locks"
    while time.monotonic() < deadline:
        held = [p.read_text().split("\n")[0] for p in locks.glob("group-*.lock")] if locks.exists() else []
        if str(proc.pid) in held:
            return proc
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the consumer did not take its lock")


@pytest.mark.parametrize("same_data_dir", [True, False])
def test_a_second_consume_on_one_spool_and_group_fails_with_one_line(tmp_path, same_data_dir):
    spool = tmp_path / "spool"
    with SpoolWriter(spool) as writer:
        writer.send([b'{"customer_id":"c","event_type":"e","transaction_id":"t","timestamp":"2021-03-01T00:00:00Z"}'])
    first = _start_consumer(spool, tmp_path / "one")
    try:
        second = run_cli("consume", "--from", f"spool:{spool}", "--drain", "0.2",
                         "--data-dir", str(tmp_path / ("one" if same_data_dir else "two")))
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert "already being read by process" in second.stderr and str(first.pid) in second.stderr
        other_group = run_cli("consume", "--from", f"spool:{spool}", "--group", "other", "--drain", "0.2",
                              "--data-dir", str(tmp_path / "three"))
        assert other_group.returncode == 0, other_group.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0
    after = run_cli("consume", "--from", f"spool:{spool}", "--drain", "0.2", "--data-dir", str(tmp_path / "one"))
    assert after.returncode == 0, after.stderr


def test_the_lock_dies_with_its_process(tmp_path):
    spool = tmp_path / "spool"
    SpoolWriter(spool).close()
    first = _start_consumer(spool, tmp_path / "data")
    first.kill()
    first.communicate(timeout=60)
    after = run_cli("consume", "--from", f"spool:{spool}", "--drain", "0.2", "--data-dir", str(tmp_path / "data"))
    assert after.returncode == 0, after.stderr
