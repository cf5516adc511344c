"""The systemd unit: it verifies, `systemd-analyze security` rates it at most
1.5 ("OK"; it is about 0.9, "SAFE"), and its sandbox does not break the
daemon: no system call the daemon makes is filtered, and it runs with /proc
reduced to process directories (ProcSubset=pid, ProtectProc=invisible).

Each check skips where its tool is missing (systemd-analyze, strace, a mount
namespace)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

UNIT = ROOT / "deploy" / "rivulet.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _installed_copy(tmp_path: Path) -> Path:
    """The unit as installed: ExecStart's program must exist for `verify`."""
    text = UNIT.read_text().replace("/opt/rivulet/venv/bin/rivulet", sys.executable)
    path = tmp_path / "rivulet.service"
    path.write_text(text)
    return path


@needs_analyze
def test_the_unit_verifies(tmp_path):
    result = subprocess.run([ANALYZE, "verify", str(_installed_copy(tmp_path))], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "rivulet.service" not in result.stderr, result.stderr


@needs_analyze
def test_the_security_rating_is_ok(tmp_path):
    result = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(_installed_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip("this systemd-analyze cannot rate a unit file offline (systemd < 252)")
    match = re.search(r"Overall exposure level for rivulet.service: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.5, result.stdout
    for setting in ("ProtectProc=", "ProcSubset=", "SystemCallFilter=~@privileged", "SystemCallFilter=~@resources",
                    "PrivateUsers=", "PrivateMounts="):
        line = next(line for line in result.stdout.splitlines() if setting in line)
        assert line.startswith("✓"), line


def _filtered_syscalls() -> set[str]:
    def expand(group: str) -> set[str]:
        out = subprocess.run([ANALYZE, "syscall-filter", group], capture_output=True, text=True, check=True).stdout
        names: set[str] = set()
        for line in out.splitlines()[1:]:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            names |= expand(line) if line.startswith("@") else {line}
        return names

    denied = set()
    for line in UNIT.read_text().splitlines():
        if line.startswith("SystemCallFilter=~"):
            for group in line.split("~", 1)[1].split():
                denied |= expand(group)
    return denied


@needs_analyze
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_the_daemon_makes_no_filtered_system_call(tmp_path):
    spool = tmp_path / "spool"
    assert run_cli("produce", "--input", str(ROOT / "samples" / "events_sample.csv"), "--to", f"spool:{spool}",
                   "--data-dir", str(tmp_path)).returncode == 0
    trace = tmp_path / "trace.txt"
    # consume with every sink and the HTTP service on.
    result = subprocess.run(
        ["strace", "-f", "-c", "-o", str(trace), sys.executable, str(ROOT / "run_stream_processing.py"),
         "consume", "--from", f"spool:{spool}", "--drain", "1", "--data-dir", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={"RIVULET__HTTP__ENABLED": "true", "RIVULET__HTTP__PORT": "0", "PATH": "/usr/bin:/bin"})
    if result.returncode != 0 and "ptrace" in result.stderr:
        pytest.skip("strace cannot trace here")
    assert result.returncode == 0, result.stderr
    used = {line.split()[-1] for line in trace.read_text().splitlines()[2:] if line and not line.startswith("-")}
    # SQLite fchown()s its journal only when running as root; the service's dynamic user is not.
    assert not (used & _filtered_syscalls()) - {"fchown", "total"}, used & _filtered_syscalls()


def test_the_daemon_runs_with_proc_reduced_to_process_directories(tmp_path):
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "sh", "-c",
                            "mount -t proc -o subset=pid,hidepid=invisible proc /proc && ! test -e /proc/meminfo"],
                           capture_output=True, text=True, timeout=60) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no mount namespace with a pid-only /proc here")
    events = ROOT / "samples" / "events_sample.csv"
    command = (f"mount -t proc -o subset=pid,hidepid=invisible proc /proc && "
               f"exec {sys.executable} {ROOT / 'run_stream_processing.py'} run --input {events} "
               f"--data-dir {tmp_path} --lateness 3h --json")
    result = subprocess.run(["unshare", "--mount", "--pid", "--fork", "sh", "-c", command], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"valid": 17' in result.stdout
