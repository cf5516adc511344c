import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def run_cli(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python run_stream_processing.py ARGS` as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "run_stream_processing.py"), *args],
        cwd=ROOT, env=full_env, input=input, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


from tests.aws_fixtures import aws_env, moto_endpoint, moto_per_service, proxy  # noqa: E402,F401 - AWS emulator fixtures (issue 3)
