"""Datafile management: sources, refresh, garbage, revision changes, the
webhook HMAC, and the [optimizely] settings."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from config.optimizely_settings import optimizely_settings, parse_optimizely_section
from config.settings import ConfigError, load_settings
from optimizely_integration.datafile import (
    DatafileError,
    DatafileManager,
    DatafileSource,
    resolve_source,
)
from optimizely_integration.settings import OptimizelySettings
from optimizely_integration.webhook_signature import verify_webhook
from tests.optimizely_support import RecordingServer, datafile_text, wait_for

pytestmark = pytest.mark.timeout(60)


def moved_to_two_step(revision: str) -> str:
    """A datafile where every user of checkout_flow_experiment gets two_step_checkout."""
    data = json.loads(datafile_text(revision))
    data["experiments"][0]["trafficAllocation"] = [{"entityId": "70002", "endOfRange": 10000}]
    return json.dumps(data)


def test_resolve_source_precedence() -> None:
    assert resolve_source("a.json", environ={}) == DatafileSource("path", "a.json")
    assert resolve_source("https://x/d.json", environ={}) == DatafileSource("url", "https://x/d.json")
    assert resolve_source(sdk_key="KEY", environ={}) == DatafileSource("url", "https://cdn.optimizely.com/datafiles/KEY.json")
    env = {"OPTIMIZELY_DATAFILE": "http://127.0.0.1:1/e.json"}
    assert resolve_source("a.json", "KEY", environ=env) == DatafileSource("url", "http://127.0.0.1:1/e.json")
    assert resolve_source(sdk_key="KEY", environ={"OPTIMIZELY_DATAFILE": "/p.json"}) == DatafileSource("path", "/p.json")
    with pytest.raises(DatafileError):
        resolve_source(environ={})


def test_load_from_sdk_key_url_template() -> None:
    server = RecordingServer(get_body=datafile_text("7").encode())
    try:
        source = resolve_source(sdk_key="ABC123", url_template=server.url + "/datafiles/{sdk_key}.json", environ={})
        manager = DatafileManager(source)
        state = manager.load()
    finally:
        server.close()
    assert state.revision == "7" and state.project_config.account_id == "10001"
    assert [r.path for r in server.requests] == ["/datafiles/ABC123.json"]


def test_garbage_from_the_url_keeps_the_old_datafile_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    server = RecordingServer(get_body=datafile_text("7").encode())
    manager = DatafileManager(DatafileSource("url", server.url + "/d.json"))
    errors = lambda kind: REGISTRY.get_sample_value("rivulet_optimizely_datafile_errors_total", {"kind": kind}) or 0.0  # noqa: E731
    try:
        manager.load()
        client_before = manager.client
        variation_before = client_before.get_variation("checkout_flow_experiment", "user-3")
        assert variation_before is not None
        caplog.set_level(logging.ERROR, logger="optimizely_integration.datafile")
        for garbage, kind in [(b"<html>oops</html>", "invalid"), (b'{"revision": "9"}', "invalid"), (b"\xff\xfe", "invalid")]:
            server.get_body = garbage
            before = errors(kind)
            assert manager.refresh_now() is False
            assert errors(kind) == before + 1
        server.get_status = 500
        before = errors("fetch")
        assert manager.refresh_now() is False and errors("fetch") == before + 1
        assert manager.revision == "7" and manager.client is client_before
        assert manager.client.get_variation("checkout_flow_experiment", "user-3") == variation_before
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(messages) == 4 and all("keeping revision 7" in m for m in messages)
        assert "not JSON" in messages[0] and "schema" in messages[1] and "HTTP 500" in messages[3]
    finally:
        server.close()


def test_revision_change_rebuilds_the_client_logs_and_sets_the_metric(caplog: pytest.LogCaptureFixture) -> None:
    server = RecordingServer(get_body=datafile_text("7").encode())
    manager = DatafileManager(DatafileSource("url", server.url + "/d.json"), refresh_interval=0.05)
    changes: list[tuple] = []
    manager.add_listener(lambda old, new: changes.append((old, new)))
    caplog.set_level(logging.INFO, logger="optimizely_integration.datafile")
    users = [f"user-{i}" for i in range(50)]
    try:
        manager.load()
        before = {u: manager.client.get_variation("checkout_flow_experiment", u) for u in users}
        assert "one_step_checkout" in before.values()
        manager.start()
        updates = REGISTRY.get_sample_value("rivulet_optimizely_datafile_updates_total") or 0.0
        # Same revision, different content: not applied (the SDK's rule).
        server.get_body = moved_to_two_step("7").encode()
        assert wait_for(lambda: sum(r.path == "/d.json" for r in server.requests) >= 3)
        assert manager.revision == "7"
        server.get_body = moved_to_two_step("8").encode()
        assert wait_for(lambda: manager.revision == "8", timeout=5)  # the poller picked it up
    finally:
        manager.stop()
        server.close()
    after = {u: manager.client.get_variation("checkout_flow_experiment", u) for u in users}
    assert set(after.values()) == {"two_step_checkout"}
    assert changes == [(None, "7"), ("7", "8")]
    assert REGISTRY.get_sample_value("rivulet_optimizely_datafile_revision") == 8.0
    assert REGISTRY.get_sample_value("rivulet_optimizely_datafile_updates_total") == updates + 1
    assert any("revision changed 7 -> 8" in r.getMessage() for r in caplog.records)


def test_file_source_refreshes_on_change(tmp_path: Path) -> None:
    path = tmp_path / "datafile.json"
    path.write_text(datafile_text("7"))
    manager = DatafileManager(str(path))
    assert manager.load().source.url == path.resolve().as_uri()
    assert manager.refresh_now() is False  # unchanged file: not even re-read
    path.write_text(moved_to_two_step("12"))
    assert manager.refresh_now() is True and manager.revision == "12"
    path.write_text("garbage")
    assert manager.refresh_now() is False and manager.revision == "12"


def test_first_load_failure_raises(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"version": "4"}')
    with pytest.raises(DatafileError, match="schema"):
        DatafileManager(str(tmp_path / "bad.json")).load()
    with pytest.raises(DatafileError, match="cannot read"):
        DatafileManager(str(tmp_path / "missing.json")).load()
    unsupported = json.loads(datafile_text())
    unsupported["version"] = "1"
    (tmp_path / "v1.json").write_text(json.dumps(unsupported))
    with pytest.raises(DatafileError):
        DatafileManager(str(tmp_path / "v1.json")).load()


def test_verify_webhook_against_an_independent_hmac() -> None:
    body = b'{"event":"project.datafile_updated","data":{"revision":8}}'
    digest = hmac.new(b"topsecret", body, hashlib.sha1).hexdigest()
    assert verify_webhook(body, f"sha1={digest}", "topsecret")
    assert verify_webhook(body, f"sha1={digest.upper()}", "topsecret")  # hex case does not matter
    assert not verify_webhook(body, f"sha1={digest}", "other")
    assert not verify_webhook(body + b"x", f"sha1={digest}", "topsecret")
    assert not verify_webhook(body, digest, "topsecret")  # no scheme
    sha256 = hmac.new(b"topsecret", body, hashlib.sha256).hexdigest()
    assert not verify_webhook(body, f"sha256={sha256}", "topsecret")
    assert not verify_webhook(body, f"sha1={digest}", "")  # no secret: disabled
    assert not verify_webhook(body, "", "topsecret") and not verify_webhook(body, None, "topsecret")


def test_settings_section_and_environment() -> None:
    settings = load_settings()  # config/local.toml carries the [optimizely] section
    opt = optimizely_settings(settings, environ={})
    assert opt.endpoint == "https://logx.optimizely.com/v1/events" and opt.max_visitors == 1000
    assert opt.max_body_bytes == 3_000_000 and opt.flush_interval == 10.0 and opt.bucketer_public is False
    assert opt.conversions == {} and opt.null_variation == "dead_letter"
    env = {"OPTIMIZELY_EVENT_ENDPOINT": "http://127.0.0.1:8/e", "OPTIMIZELY_DATAFILE": "/d.json", "HOOK": "abc"}
    opt = parse_optimizely_section({"conversions": {"purchase": "purchase"}, "webhook_secret_env": "HOOK"}, env)
    assert (opt.endpoint, opt.datafile, opt.webhook_secret(env)) == ("http://127.0.0.1:8/e", "/d.json", "abc")
    assert opt.conversions == {"purchase": "purchase"} and OptimizelySettings().webhook_secret({}) == ""
    for bad in ({"max_visitors": 0}, {"null_variation": "maybe"}, {"conversions": {"a": 1}}, {"flush_interval": "10s"}):
        with pytest.raises(ConfigError, match="optimizely"):
            parse_optimizely_section(bad, {})
