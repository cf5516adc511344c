"""The bucketer: same variations as the SDK, impressions through the bulk
dispatcher, the HTTP routes (auth, errors, debug, webhook) and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient

from optimizely_integration.bucketer import Bucketer, BucketerError
from optimizely_integration.bulk_event_dispatcher import BulkEventDispatcher
from optimizely_integration.datafile import DatafileManager, DatafileSource
from optimizely_integration.http_routes import build_optimizely_router
from optimizely_integration.payload_record import decode_payload_record
from optimizely_integration.webhook_signature import sign_webhook
from producers.spool import SpoolReader, SpoolWriter
from streams.batches import BatchKind
from tests.optimizely_support import DATAFILE_PATH, RecordingServer, datafile_text, sdk_client, wait_for

pytestmark = pytest.mark.timeout(60)

EXPERIMENTS = ["checkout_flow_experiment", "platinum_offer", "paused_experiment", "checkout_flag_test"]
SECRET = "s3cret-webhook"


def attributes_for(i: int) -> dict[str, Any]:
    return {"tier": ["gold", "platinum", "silver"][i % 3], "member_since_days": i % 90}


@pytest.fixture
def manager() -> DatafileManager:
    m = DatafileManager(str(DATAFILE_PATH))
    m.load()
    return m


def test_variations_equal_the_sdks_get_variation(manager: DatafileManager) -> None:
    reference = sdk_client(DATAFILE_PATH.read_text(), dispatcher=_NoDispatch())
    bucketer = Bucketer(manager, activate=False)
    seen: dict[str, set] = {}
    for i in range(1000):
        user, attributes = f"visitor-{i}", attributes_for(i)
        for experiment in EXPERIMENTS:
            expected = reference.get_variation(experiment, user, attributes)
            result = bucketer.variation(experiment, user, attributes)
            assert (result.variation, result.user, result.experiment) == (expected, user, experiment)
            seen.setdefault(experiment, set()).add(expected)
    reference.close()
    # The comparison covered every outcome: both arms, not bucketed, paused.
    assert seen["checkout_flow_experiment"] == {"one_step_checkout", "two_step_checkout", None}
    assert seen["platinum_offer"] == {"offer_a", "offer_b", None}  # audience: platinum only
    assert seen["paused_experiment"] == {None}
    assert bucketer.variation("checkout_flow_experiment", "qa_user").variation == "two_step_checkout"  # whitelist


class _NoDispatch:
    def dispatch_event(self, log_event: Any) -> None:
        raise AssertionError("get_variation must not dispatch")


def test_activation_sends_impressions_through_the_bulk_dispatcher(tmp_path: Path) -> None:
    dispatcher = BulkEventDispatcher(SpoolWriter(tmp_path))
    manager = DatafileManager(str(DATAFILE_PATH), event_dispatcher=dispatcher)
    manager.load()
    bucketer = Bucketer(manager, activate=True)
    results = [bucketer.variation("checkout_flow_experiment", f"u{i}", {"tier": "gold"}) for i in range(200)]
    assert dispatcher.flush(timeout=10)
    dispatcher.close()
    reader = SpoolReader(tmp_path, poll_interval=0.01)
    records = []

    def on_batch(batch: Any) -> None:
        records.extend(batch.records)
        if batch.kind is BatchKind.IDLE:
            reader.stop()

    reader.batches().subscribe(on_batch)
    reader.close()
    impressions = {}
    for record in records:
        payload = decode_payload_record(record).payload
        for visitor in payload["visitors"]:
            decision = visitor["snapshots"][0]["decisions"][0]
            impressions[visitor["visitor_id"]] = decision["metadata"]["variation_key"]
    bucketed = {r.user: r.variation for r in results if r.variation is not None}
    assert 150 < len(bucketed) < 200  # 90% traffic allocation
    assert impressions == bucketed  # one impression per bucketed user, same variation


def test_bucketer_errors(manager: DatafileManager) -> None:
    bucketer = Bucketer(manager, activate=False)
    for args, status, code in [
        ((None, "u"), 400, "missing_experiment"),
        (("checkout_flow_experiment", ""), 400, "missing_user"),
        (("nope", "u"), 404, "unknown_experiment"),
    ]:
        with pytest.raises(BucketerError) as info:
            bucketer.variation(*args)
        assert (info.value.status, info.value.code) == (status, code)
    with pytest.raises(BucketerError) as info:
        Bucketer(DatafileManager(str(DATAFILE_PATH))).variation("checkout_flow_experiment", "u")  # never loaded
    assert info.value.status == 503


# -- HTTP ------------------------------------------------------------------------------


def require_token(x_token: str | None = Header(default=None)) -> None:
    if x_token != "letmein":
        raise HTTPException(status_code=401, detail="auth required")


def app_for(manager: DatafileManager, secret: str | None = SECRET, public: bool = False, activate: bool = False) -> TestClient:
    app = FastAPI()
    app.include_router(build_optimizely_router(Bucketer(manager, activate=activate), manager, require_token, secret, public))
    return TestClient(app)


AUTH = {"X-Token": "letmein"}


def test_bucketer_route_answers_like_the_seed(manager: DatafileManager) -> None:
    client = app_for(manager)
    expected = Bucketer(manager, activate=False).variation("checkout_flow_experiment", "cooper34523569",
                                                           {"tier": "platinum", "member_since_days": 56})
    response = client.get("/bucketer", params={"e": "checkout_flow_experiment", "u": "cooper34523569",
                                               "a": 'tier:"platinum",member_since_days:56', "debug": "1"}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("variation", "user", "experiment")} == {
        "variation": expected.variation, "user": "cooper34523569", "experiment": "checkout_flow_experiment"}
    debug = body["debug"]
    assert debug["project_id"] == "20002" and debug["account_id"] == "10001"
    assert debug["datafile"] == {"url": DATAFILE_PATH.resolve().as_uri(), "revision": "7"}
    assert debug["user_attributes"] == {"tier": "platinum", "member_since_days": 56}
    assert debug["time"].endswith("Z")
    plain = client.get("/bucketer", params={"e": "checkout_flow_experiment", "u": "x"}, headers=AUTH).json()
    assert set(plain) == {"variation", "user", "experiment"}


def test_bucketer_route_defaults_user_to_client_ip(manager: DatafileManager) -> None:
    response = app_for(manager).get("/bucketer", params={"e": "checkout_flow_experiment"}, headers=AUTH)
    assert response.status_code == 200 and response.json()["user"] == "testclient"  # TestClient's client host


@pytest.mark.parametrize(
    "params,status,code,mentions",
    [
        ({"e": "checkout_flow_experiment", "a": 'tier:platinum'}, 400, "bad_attribute", "'tier:platinum'"),
        ({"e": "checkout_flow_experiment", "a": 'n:1,x:"a,b",bad'}, 400, "bad_attribute", "'bad'"),
        ({}, 400, "missing_experiment", "required"),
        ({"e": "no_such_experiment"}, 404, "unknown_experiment", "no_such_experiment"),
    ],
)
def test_bucketer_route_errors(manager: DatafileManager, params: dict, status: int, code: str, mentions: str) -> None:
    response = app_for(manager).get("/bucketer", params={"u": "x", **params}, headers=AUTH)
    assert response.status_code == status
    assert response.json()["error"] == code and mentions in response.json()["reason"]


def test_bucketer_needs_auth_unless_public(manager: DatafileManager) -> None:
    params = {"e": "checkout_flow_experiment", "u": "x"}
    assert app_for(manager).get("/bucketer", params=params).status_code == 401
    assert app_for(manager).get("/decide", params={"flag": "checkout_flag", "u": "x"}).status_code == 401
    assert app_for(manager, public=True).get("/bucketer", params=params).status_code == 200
    with pytest.raises(ValueError):
        build_optimizely_router(Bucketer(manager), manager, None, SECRET, public=False)


def test_decide_route_matches_the_sdk(manager: DatafileManager) -> None:
    reference = sdk_client(DATAFILE_PATH.read_text(), dispatcher=_NoDispatch())
    client = app_for(manager)
    variations = set()
    for i in range(40):
        attributes = attributes_for(i)
        expected = reference.create_user_context(f"d{i}", attributes).decide(
            "checkout_flag", ["DISABLE_DECISION_EVENT"])
        a = f'tier:"{attributes["tier"]}",member_since_days:{attributes["member_since_days"]}'
        body = client.get("/decide", params={"flag": "checkout_flag", "u": f"d{i}", "a": a}, headers=AUTH).json()
        assert (body["enabled"], body["variation"], body["rule"]) == (expected.enabled, expected.variation_key, expected.rule_key)
        variations.add(body["variation"])
    reference.close()
    assert {"on", "off", None} <= variations
    missing = client.get("/decide", params={"flag": "nope", "u": "x"}, headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_flag"


def test_webhook_signature_and_refetch(tmp_path: Path) -> None:
    server = RecordingServer(get_body=datafile_text("7").encode())
    manager = DatafileManager(DatafileSource("url", server.url + "/datafile.json"), refresh_interval=3600)
    manager.load()
    manager.start()
    try:
        client = app_for(manager)
        server.get_body = datafile_text("8").encode()
        body = json.dumps({"project_id": 20002, "event": "project.datafile_updated", "data": {"revision": 8}}).encode()
        # No signature, bad signature, signature with the wrong secret: refused, no refetch.
        assert client.post("/webhooks/optimizely", content=body).status_code == 401
        assert client.post("/webhooks/optimizely", content=body, headers={"X-Hub-Signature": "sha1=00"}).status_code == 403
        wrong = sign_webhook(body, "other-secret")
        assert client.post("/webhooks/optimizely", content=body, headers={"X-Hub-Signature": wrong}).status_code == 403
        tampered = sign_webhook(body + b" ", SECRET)
        assert client.post("/webhooks/optimizely", content=body, headers={"X-Hub-Signature": tampered}).status_code == 403
        assert manager.revision == "7"
        good = client.post("/webhooks/optimizely", content=body, headers={"X-Hub-Signature": sign_webhook(body, SECRET)})
        assert good.status_code == 202
        assert wait_for(lambda: manager.revision == "8", timeout=5)  # well before the hour-long poll
        # Without a secret the route is disabled, even with a "valid" signature.
        disabled = app_for(manager, secret=None).post(
            "/webhooks/optimizely", content=body, headers={"X-Hub-Signature": sign_webhook(body, "")})
        assert disabled.status_code == 404
    finally:
        manager.stop()
        server.close()


# -- CLI -------------------------------------------------------------------------------


def test_cli_bucket_prints_the_bucketer_json(manager: DatafileManager, capsys: pytest.CaptureFixture) -> None:
    from daemon.cli import main

    expected = Bucketer(manager, activate=False).variation(
        "checkout_flow_experiment", "cooper34523569", {"tier": "platinum", "member_since_days": 56})
    code = main(["bucket", "--experiment", "checkout_flow_experiment", "--user", "cooper34523569",
                 "--attr", 'tier:"platinum"', "--attr", "member_since_days:56", "--debug",
                 "--datafile", str(DATAFILE_PATH)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["variation"] == expected.variation and out["user"] == "cooper34523569"
    assert out["debug"]["user_attributes"] == {"tier": "platinum", "member_since_days": 56}
    assert out["debug"]["datafile"]["revision"] == "7"

    code = main(["bucket", "--experiment", "checkout_flow_experiment", "--user", "u", "--attr", "tier:platinum",
                 "--datafile", str(DATAFILE_PATH)])
    assert code == 2 and "'tier:platinum'" in capsys.readouterr().err
    code = main(["bucket", "--experiment", "nope", "--user", "u", "--datafile", str(DATAFILE_PATH)])
    assert code == 2 and "unknown_experiment" in capsys.readouterr().err
    code = main(["bucket", "--experiment", "x", "--user", "u", "--datafile", str(Path("/nonexistent/datafile.json"))])
    assert code == 2 and "cannot read datafile" in capsys.readouterr().err


def test_cli_activate_then_forward_delivers_the_impressions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`bucket --activate` puts impressions on the default spool under data_dir;
    `optimizely-forward --drain` sends them to OPTIMIZELY_EVENT_ENDPOINT."""
    from daemon.cli import main

    server = RecordingServer()
    monkeypatch.setenv("RIVULET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("OPTIMIZELY_EVENT_ENDPOINT", server.url + "/v1/events")
    monkeypatch.setenv("OPTIMIZELY_DATAFILE", str(DATAFILE_PATH))
    try:
        variations = {}
        for user in ("alice", "bob", "cooper34523569", "qa_user"):
            assert main(["bucket", "--experiment", "checkout_flow_experiment", "--user", user, "--activate"]) == 0
            variations[user] = json.loads(capsys.readouterr().out)["variation"]
        assert (tmp_path / "data" / "optimizely-spool").is_dir()
        assert main(["optimizely-forward", "--drain", "0.3"]) == 0
        summary = json.loads(capsys.readouterr().out)
    finally:
        server.close()
    bucketed = {u: v for u, v in variations.items() if v is not None}
    received = {v["visitor_id"]: v["snapshots"][0]["decisions"][0]["metadata"]["variation_key"]
                for body in server.accepted_bodies() for v in body["visitors"]}
    assert received == bucketed and len(bucketed) >= 3
    assert len(server.posts()) == 1  # merged into one request
    assert summary["visitors_sent"] == len(bucketed) and summary["unacknowledged"] == 0
