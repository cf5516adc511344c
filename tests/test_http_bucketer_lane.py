"""The bucketer's routes, served past FastAPI's routing by the collector's
lane (`service.collector.plain_routes`), answer exactly as through FastAPI:
auth, errors, metrics, the document."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.http_service import optimizely_parts
from tests.test_http_support import make_settings, running_service

pytestmark = pytest.mark.timeout(60)

DATAFILE = Path(__file__).resolve().parent / "fixtures" / "optimizely" / "datafile_rev7.json"


def test_the_bucketer_through_the_lane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMIZELY_DATAFILE", str(DATAFILE))
    router, _ = optimizely_parts(make_settings(tmp_path / "data"))
    with running_service(tmp_path, optimizely_router=router) as svc:
        app = svc.handle.server.config.app
        client, anonymous = svc.client("ethan"), svc.client(None)
        refused = anonymous.get("/bucketer", params={"e": "checkout_flow_experiment", "u": "x"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        answer = client.get("/bucketer", params={"e": "checkout_flow_experiment", "u": "cooper34523569", "a": 'tier:"platinum"'})
        assert answer.status_code == 200 and answer.json()["user"] == "cooper34523569"
        assert client.get("/bucketer", params={"u": "x"}).json()["error"] == "missing_experiment"
        assert client.get("/bucketer", params={"e": "nope", "u": "x"}).status_code == 404
        assert client.get("/bucketer", params={"e": "checkout_flow_experiment", "u": "x", "a": "tier:platinum"}).status_code == 400
        assert client.get("/decide", params={"flag": "checkout_flag", "u": "x"}).status_code == 200
        assert client.post("/bucketer").status_code == 405  # other methods are FastAPI's
        metrics = anonymous.get("/metrics").text
        assert 'rivulet_http_requests_total{method="GET",route="/bucketer",status="401"}' in metrics
        document = anonymous.get("/openapi.json").json()["paths"]["/bucketer"]["get"]
        assert document["security"] == [{"basic": []}] and {p["name"] for p in document["parameters"]} == {"e", "u", "a", "debug"}
    lane = next(m for m in app.user_middleware if m.cls.__name__ == "CollectorLane")
    assert {("GET", "/bucketer"), ("GET", "/decide")} <= set(lane.kwargs["plain"])
