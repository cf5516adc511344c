"""Operations routes, the `serve` command, the server inside `consume`, and
mounting the Optimizely router."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter

from config.http_service import optimizely_parts
from service.metrics import METRIC_NAMES
from tests.test_http_support import CLI, PROJECT, cli_env, make_settings, running_service

pytestmark = pytest.mark.timeout(60)


def test_healthz_readyz_metrics_docs(tmp_path: Path) -> None:
    with running_service(tmp_path) as svc:
        client = svc.client(None)
        assert client.get("/healthz").json()["status"] == "ok"
        ready = client.get("/readyz")
        assert ready.status_code == 200
        components = ready.json()["components"]
        assert {"collector_transport", "count_store", "credentials", "idempotency_ledger"} <= set(components)
        assert all(c["ok"] for c in components.values())
        svc.client("ethan").post("/button/click", json={"session_id": "s", "button_id": "b"})
        svc.client("ethan", "wrong").post("/button/click", json={})
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        for name in METRIC_NAMES:
            assert name in metrics.text, name
        # Labelled by route template, so label values stay bounded.
        assert re.search(r'rivulet_http_requests_total\{method="POST",route="/button/click",status="200"\} [1-9]', metrics.text)
        assert re.search(r'rivulet_http_auth_failures_total\{reason="bad_credentials"\} [1-9]', metrics.text)
        assert client.get("/docs").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        for path in ["/events", "/web/page_view", "/button/click", "/web/page_view/count", "/button/click/count",
                     "/events/customers/{customer_id}/buckets", "/events/customers/{customer_id}/buckets.svg", "/healthz", "/readyz", "/metrics"]:
            assert path in paths, path


def test_readyz_is_503_when_a_component_is_not_ready(tmp_path: Path) -> None:
    checks = {"source": (True, "reading"), "sinks": {"ok": False, "detail": "s3 unreachable"}}
    with running_service(tmp_path, readiness=lambda: checks) as svc:
        r = svc.client(None).get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert r.json()["components"]["sinks"] == {"ok": False, "detail": "s3 unreachable"}
        checks["sinks"] = True
        assert svc.client(None).get("/readyz").status_code == 200

    def broken() -> dict:
        raise RuntimeError("boom")

    with running_service(tmp_path / "b", writer=None, users={}, readiness=broken) as svc:
        r = svc.client(None).get("/readyz")
        assert r.status_code == 503 and "boom" in r.text


def _fake_routes(monkeypatch: pytest.MonkeyPatch, **attributes) -> types.ModuleType:
    module = types.ModuleType("config.optimizely_routes")
    for name, value in attributes.items():
        setattr(module, name, value)
    monkeypatch.setitem(sys.modules, "optimizely_integration", types.ModuleType("optimizely_integration"))
    monkeypatch.setitem(sys.modules, "config.optimizely_routes", module)
    return module


def _bucket_router() -> APIRouter:
    router = APIRouter()

    @router.get("/bucket")
    def bucket() -> dict:
        return {"variation": "a"}

    return router


def test_optimizely_mounting_is_optional_and_robust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path / "data")
    settings.sections["optimizely"] = {}  # type: ignore[index]
    assert optimizely_parts(settings) == (None, None)  # neither datafile nor sdk_key: not configured
    settings.sections["optimizely"] = {"sdk_key": "k"}  # type: ignore[index]

    # A ready-made router: mounted behind Basic auth.
    _fake_routes(monkeypatch, router=_bucket_router(), readiness=lambda: {"ok": True, "detail": "datafile rev 7"})
    mounted, ready = optimizely_parts(settings)
    assert isinstance(mounted, APIRouter) and ready() == {"optimizely": {"ok": True, "detail": "datafile rev 7"}}
    with running_service(tmp_path / "a", optimizely_router=mounted, readiness=ready) as svc:
        assert svc.client(None).get("/bucket").status_code == 401
        assert svc.client("ethan").get("/bucket").json() == {"variation": "a"}
        assert svc.client(None).get("/readyz").json()["components"]["optimizely"]["detail"] == "datafile rev 7"

    # A factory that takes our auth dependency guards its own routes.
    seen = []

    def build_router(settings, auth_dependency=None):
        seen.append(auth_dependency)
        return _bucket_router()

    _fake_routes(monkeypatch, build_router=build_router)
    factory, _ = optimizely_parts(settings)
    with running_service(tmp_path / "b", optimizely_router=factory) as svc:
        assert svc.client(None).get("/bucket").status_code == 200  # its own choice: it ignored the guard
    assert seen and seen[0] is not None

    # A factory that fails: the server runs, /readyz says why.
    def broken(settings, auth_dependency=None):
        raise RuntimeError("no datafile")

    _fake_routes(monkeypatch, build_router=broken)
    factory, _ = optimizely_parts(settings)
    with running_service(tmp_path / "c", optimizely_router=factory) as svc:
        r = svc.client(None).get("/readyz")
        assert r.status_code == 503 and "no datafile" in r.json()["components"]["optimizely"]["detail"]
        assert svc.client("ethan").post("/button/click", json={"session_id": "s", "button_id": "b"}).status_code == 200

    # The module absent: nothing mounted, nothing reported.
    monkeypatch.setitem(sys.modules, "optimizely_integration", None)
    monkeypatch.setitem(sys.modules, "config.optimizely_routes", None)
    assert optimizely_parts(settings) == (None, None)


def test_real_optimizely_routes_bucketer_guarded_webhook_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("config.optimizely_routes")
    datafile = PROJECT / "tests" / "fixtures" / "optimizely" / "datafile_rev7.json"
    if not datafile.exists():
        pytest.skip("no Optimizely datafile fixture")
    monkeypatch.delenv("OPTIMIZELY_WEBHOOK_SECRET", raising=False)
    settings = make_settings(tmp_path / "data")
    settings.sections["optimizely"] = {"datafile": str(datafile), "bucketer_activate": False, "datafile_refresh_interval": 3600.0}  # type: ignore[index]
    factory, ready = optimizely_parts(settings)
    assert factory is not None
    with running_service(tmp_path, optimizely_router=factory, readiness=ready) as svc:
        assert svc.client(None).get("/bucketer", params={"e": "x", "u": "u"}).status_code == 401
        assert svc.client("ethan").get("/bucketer", params={"e": "x", "u": "u"}).status_code != 401
        # The webhook is authenticated by its signature, not Basic auth (404: no secret configured).
        assert svc.client(None).post("/webhooks/optimizely", content=b"{}").status_code == 404
        assert svc.client(None).get("/readyz").json()["components"]["optimizely"]["ok"] is True


def _wait_for_line(proc: subprocess.Popen, stream: str, pattern: str, timeout: float = 20) -> re.Match:
    deadline = time.monotonic() + timeout
    pipe = getattr(proc, stream)
    seen = []
    while time.monotonic() < deadline:
        line = pipe.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    proc.kill()
    pytest.fail(f"no line matching {pattern!r}; got {seen!r}; stderr: {proc.stderr.read() if stream != 'stderr' else ''}")


def test_serve_runs_alone_and_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", "0"], cwd=PROJECT, env=cli_env(data), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = _wait_for_line(proc, "stdout", r"serving on (http://[\d.]+:\d+)").group(1)
        assert httpx.get(f"{url}/healthz").status_code == 200
        ready = httpx.get(f"{url}/readyz")
        # No users yet: not ready, and it says why.
        assert ready.status_code == 503 and "users add" in ready.json()["components"]["credentials"]["detail"]
        assert ready.json()["components"]["collector_transport"]["detail"].startswith("spool:")
        assert httpx.post(f"{url}/events", json={"event_type": "x"}).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, proc.stderr.read()


def test_serve_reports_a_busy_port_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = subprocess.run([*CLI, "serve", "--port", str(port)], cwd=PROJECT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "cannot listen" in done.stderr


def test_consume_serves_http_when_enabled(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = cli_env(data, RIVULET__HTTP__ENABLED="true", RIVULET__HTTP__PORT="0")
    proc = subprocess.Popen(
        [*CLI, "consume", "--from", f"spool:{data / 'spool'}"], cwd=PROJECT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = _wait_for_line(proc, "stderr", r"http: serving on (http://[\d.]+:\d+)").group(1)
        components = httpx.get(f"{url}/readyz").json()["components"]
        assert {"source", "pipeline", "count_store", "collector_transport"} <= set(components)
        assert components["source"]["ok"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
