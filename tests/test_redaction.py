"""Issue 13, item 8: no secret in what Rivulet writes about itself.

URL userinfo (`AWS_ENDPOINT_URL=http://user:pass@...`) and known secret
shapes are redacted in both log formats, in tracebacks (which the text
format used to print as they were), in JSON fields and in the CLI's error
lines."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from daemon.logs import JsonFormatter, RedactingFilter, RedactingTextFormatter, setup_logging
from observability.health import PipelineHealth
from observability.redaction import redact
from tests.conftest import run_cli

SECRETS = {
    "http://admin:hunter2@localhost:4566/x": "hunter2",
    "postgresql://svc:s3cr3t-pw@db.internal:5432/app": "s3cr3t-pw",
    "https://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI@s3.example.com": "wJalrXUtnFEMI",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY": "wJalrXUtnFEMI/K7MDENG",
    "{'aws_secret_access_key': 'wJalrXUtnFEMI/K7MDENG'}": "wJalrXUtnFEMI",
    '{"password": "correct horse battery"}': "correct horse",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ": "eyJhbGciOiJIUzI1NiJ9",
    "X-Amz-Security-Token: FwoGZXIvYXdzEBYaDH7example": "FwoGZXIvYXdzEBYaDH7example",
    "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F2021&X-Amz-Signature=abcdef0123456789": "abcdef0123456789",
    "token ghp_0123456789abcdefghijABCDEFGHIJ012345 leaked": "ghp_0123456789abcdef",
    "key sk_live_0123456789abcdefABCDEF here": "sk_live_0123456789",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----": "MIIEowIBAAKCAQEA",
    "optimizely sdk_key=AbCdEf123456 webhook_secret: whsec_987654": "AbCdEf123456",
    "AKIAIOSFODNN7EXAMPLE": "AKIAIOSFODNN7EXAMPLE",
}


@pytest.mark.parametrize("text, secret", SECRETS.items())
def test_known_secrets_are_redacted(text, secret):
    cleaned = redact(text)
    assert secret not in cleaned and "***" in cleaned


def test_what_is_not_a_secret_stays():
    for text in ["s3://bucket/events/dt=2021-03-01/hour=4/part-x.parquet", "http://localhost:8080/readyz",
                 "error: config key pipeline.lateness: not a duration (use e.g. 10m, 3h, 90s): 'soon'",
                 "user bob@x.com counted 3", "Authorization: Basic ***"]:
        assert redact(text) == text


def _record(message: str, *args, exc: BaseException | None = None, **extra) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    record = logging.LogRecord("botocore", logging.ERROR, __file__, 1, message, args, exc_info)
    record.__dict__.update(extra)
    return record


def _raised(message: str) -> BaseException:
    try:
        raise ConnectionError(message)
    except ConnectionError as exc:
        return exc


@pytest.mark.parametrize("formatter", [RedactingTextFormatter("%(levelname)s %(name)s: %(message)s"), JsonFormatter()])
def test_both_log_formats_redact_messages_tracebacks_stacks_and_fields(formatter):
    url = "http://user:hunter2@127.0.0.1:1/bucket"
    record = _record("cannot reach %s", url, exc=_raised(f"Could not connect to the endpoint URL: {url}"),
                     fields={"endpoint": url, "nested": {"password": "hunter2"}})
    record.stack_info = f"Stack (most recent call last):\n  connect({url!r})"
    RedactingFilter().filter(record)
    line = formatter.format(record)
    assert "hunter2" not in line and "Traceback" in line and "http://***@127.0.0.1:1/bucket" in line
    if isinstance(formatter, JsonFormatter):
        entry = json.loads(line)
        assert entry["endpoint"] == "http://***@127.0.0.1:1/bucket" and entry["nested"] == {"password": "***"}
        assert "hunter2" not in entry["exception"] and "hunter2" not in entry["stack"]


def test_setup_logging_redacts_a_logged_traceback_in_the_text_format(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("INFO", "text")
        logging.getLogger("rivulet.test").exception("failed", exc_info=_raised("token=abc123secret"))
    finally:
        root.handlers[:], root.level = handlers, level
    assert "Traceback" in stream.getvalue() and "abc123secret" not in stream.getvalue()


def test_health_reasons_are_redacted():
    health = PipelineHealth()
    health.failing("s3", "cannot reach http://user:hunter2@127.0.0.1:1/")
    assert health.problems()["s3"] == "cannot reach http://***@127.0.0.1:1/"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_cli_error_lines_and_debug_logs_do_not_show_endpoint_credentials(tmp_path, log_format):
    path = tmp_path / "in.csv"
    path.write_text("c,view,t1,2021-03-01T00:00:00Z\n")
    env = {"AWS_ENDPOINT_URL": "http://user:hunter2@127.0.0.1:1", "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
           "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY", "AWS_MAX_ATTEMPTS": "1",
           "AWS_DEFAULT_REGION": "us-east-1"}
    config = os.path.join(os.path.dirname(__file__), "..", "config", "aws.toml")
    result = run_cli("--log-format", log_format, "--log-level", "DEBUG", "run", "--input", str(path),
                     "--config", config, env=env, timeout=240)
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "http://***@127.0.0.1:1" in error_lines[0], result.stderr[-2000:]
    for secret in ("hunter2", "wJalrXUtnFEMIK7MDENG", "AKIAIOSFODNN7EXAMPLE"):
        assert secret not in result.stderr and secret not in result.stdout
