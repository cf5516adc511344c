"""pytest fixtures for tests against a real AWS emulator: a moto server.

`moto_endpoint` (session): one `ThreadedMotoServer` on 127.0.0.1, port 0.
`aws_env` (function): dummy credentials, us-east-1 and `AWS_ENDPOINT_URL`
pointing at the server, in this process's environment (so subprocesses
inherit it) and without any real AWS profile; yields the endpoint.
`moto_per_service` (function, on top of `aws_env`): Kinesis, DynamoDB and S3
each on a moto server of its own, in a process of its own, for timing a
consumer (`AWS_ENDPOINT_URL_<SERVICE>` point at them; see `MotoServices`).

Tests never reset the server (that would wipe other tests' state): each test
names its own streams, tables, buckets and queues with `unique()`.

Registered by a one-line import in `tests/conftest.py`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from typing import Any, Iterator

import pytest

from tests.fault_proxy import FaultProxy

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in DUMMY_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL") or n.startswith("RIVULET__")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


# One service's moto app on a threaded werkzeug server, as ThreadedMotoServer
# runs the dispatching one; prints its port once it listens.
_ONE_SERVICE = """
import logging, sys
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import MotoRequestHandler
from moto.server import create_backend_app
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = make_server("127.0.0.1", 0, create_backend_app(sys.argv[1]), threaded=True, request_handler=MotoRequestHandler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class MotoServices:
    """Kinesis, DynamoDB and S3 on moto servers of their own, each in its own
    process, serving only that service's app.

    The shared server (`moto_endpoint`) is one Python process for every
    service, and before each request its dispatcher finds the service again
    (it lists moto's package directory and tries the URL patterns of every
    service): about a quarter of the CPU of a small PutObject. A consumer's
    time against it is that one process's CPU time. Here each service is its
    own process, as AWS services do not share a CPU with each other, and its
    requests go straight to the service's app (moto's `create_backend_app`,
    what the dispatcher itself hands each request to)."""

    SERVICES = ("kinesis", "dynamodb", "s3")

    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen] = {}
        self.endpoints: dict[str, str] = {}
        try:
            for service in self.SERVICES:
                process = subprocess.Popen([sys.executable, "-c", _ONE_SERVICE, service], stdout=subprocess.PIPE,
                                           text=True)
                self.processes[service] = process
                port = process.stdout.readline().strip() if process.stdout else ""
                if not port.isdigit():
                    raise RuntimeError(f"moto server for {service} did not start")
                self.endpoints[service] = f"http://127.0.0.1:{port}"
        except BaseException:
            self.close()
            raise

    def cpu_seconds(self) -> dict[str, float] | None:
        """User + system CPU seconds of each server so far (None without /proc)."""
        from bench.aws_calls import cpu_seconds

        try:
            return {service: cpu_seconds(process.pid) for service, process in self.processes.items()}
        except OSError:
            return None

    def close(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(timeout=10)


@pytest.fixture
def moto_per_service(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServices]:
    services = MotoServices()
    for service, endpoint in services.endpoints.items():
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service.upper()}", endpoint)
    try:
        yield services
    finally:
        services.close()


def unique(prefix: str) -> str:
    """A resource name no other test uses (lower case: valid for S3 too)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def client(service: str, endpoint: str | None = None, max_attempts: int = 1, **config: Any) -> Any:
    """A real boto3 client; `max_attempts=1` so the code under test does the retrying."""
    import boto3
    import botocore.config

    return boto3.session.Session().client(
        service,
        region_name="us-east-1",
        endpoint_url=endpoint,
        config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": max_attempts}, **config),
    )


def read_batches(reader: Any, until: Any, timeout: float = 20.0) -> list:
    """Subscribe to `reader.batches()` on this thread; stop the reader when
    `until(batches)` holds (or on timeout) and return what it emitted."""
    import threading

    batches: list = []
    timer = threading.Timer(timeout, reader.stop)
    timer.start()

    def on_next(batch: Any) -> None:
        batches.append(batch)
        if until(batches):
            reader.stop()

    errors: list[BaseException] = []
    reader.batches().subscribe(on_next, errors.append)
    timer.cancel()
    if errors:
        raise errors[0]
    return batches


@pytest.fixture
def proxy(aws_env: str) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the moto server."""
    fault_proxy = FaultProxy(aws_env)
    yield fault_proxy
    fault_proxy.close()
