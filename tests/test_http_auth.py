"""HTTP Basic auth: good, bad, missing, malformed; rate limiting; the
credentials file; `users add` from stdin."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from service.auth import CredentialStore, FailureLimiter, parse_basic
from tests.test_http_support import USERS, run_cli, running_service

pytestmark = pytest.mark.timeout(60)

CLICK = {"session_id": "XYZ", "button_id": "ABC"}


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("rivulet_http_auth_failures_total", {"reason": reason}) or 0.0


def test_good_bad_missing_and_malformed_credentials(tmp_path: Path) -> None:
    with running_service(tmp_path, auth_failure_limit=100) as svc:
        assert svc.client("ethan").post("/button/click", json=CLICK).json() == {"message": "Received", "accepted": 1}
        assert svc.client("mia").post("/button/click", json=CLICK).status_code == 200  # non-ASCII password

        before = failures("bad_credentials")
        for user, password in [("ethan", "wrong"), ("nobody", "xyz"), ("ethan", ""), ("ETHAN", "xyz")]:
            r = svc.client(user, password).post("/button/click", json=CLICK)
            assert r.status_code == 401, (user, r.text)
            assert r.headers["www-authenticate"].startswith('Basic realm="rivulet"')
            assert r.json() == {"error": "bad username or password"}
        assert failures("bad_credentials") == before + 4

        anonymous = svc.client(None)
        for method, path in [("POST", "/events"), ("GET", "/button/click/count?button_id=a"), ("GET", "/events/customers/x/buckets")]:
            r = anonymous.request(method, path)
            assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]

        for header in ["Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Bearer abc", "Basic", "Basic " + base64.b64encode(b"\xff\xfe:x").decode()]:
            r = anonymous.post("/events", headers={"Authorization": header}, json={"event_type": "x"})
            assert r.status_code == 401, header
        # Nothing unauthenticated reached the transport.
        assert svc.client("ethan").get("/healthz").status_code == 200


def test_repeated_failures_are_rate_limited_per_client(tmp_path: Path) -> None:
    with running_service(tmp_path, auth_failure_limit=3, auth_failure_window="1h") as svc:
        bad = svc.client("ethan", "guess")
        assert [bad.post("/button/click", json=CLICK).status_code for _ in range(3)] == [401, 401, 401]
        before = failures("rate_limited")
        limited = bad.post("/button/click", json=CLICK)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        # The right password does not help while the client is blocked: no guessing at line rate.
        assert svc.client("ethan").post("/button/click", json=CLICK).status_code == 429
        assert failures("rate_limited") == before + 2
        # Unauthenticated routes stay open.
        assert svc.client(None).get("/healthz").status_code == 200


def test_failure_limiter_refills_and_separates_clients() -> None:
    now = [0.0]
    limiter = FailureLimiter(limit=2, window_seconds=10, clock=lambda: now[0])
    limiter.failed("a")
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    assert limiter.retry_after("a") == 5  # one token per 5 s
    assert limiter.retry_after("b") == 0
    now[0] = 5.0
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    assert limiter.retry_after("a") == 5


def test_parse_basic() -> None:
    token = base64.b64encode("ü:p:w".encode()).decode()
    assert parse_basic(f"Basic {token}") == ("ü", "p:w")
    assert parse_basic(f"basic   {token}") == ("ü", "p:w")
    assert parse_basic(None) is None
    assert parse_basic("Basic") is None


def test_credentials_file_holds_salted_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "creds" / "credentials.json"
    store = CredentialStore(path)
    assert store.add_user("a", "same password") is True
    assert store.add_user("b", "same password") is True
    assert store.add_user("a", "new password") is False
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "password" not in text
    users = json.loads(text)["users"]
    assert users["a"]["salt"] != users["b"]["salt"] and users["a"]["hash"] != users["b"]["hash"]
    assert users["a"]["kdf"] == "scrypt"
    fresh = CredentialStore(path)
    assert fresh.verify("a", "new password") and fresh.verify("b", "same password")
    assert not fresh.verify("a", "same password") and not fresh.verify("c", "x")
    assert fresh.verify("a", "new password")  # remembered: no second KDF, same answer


def test_pbkdf2_entries_verify(tmp_path: Path) -> None:
    import hashlib

    salt = b"0123456789abcdef"
    digest = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 1000)
    path = tmp_path / "c.json"
    entry = {"kdf": "pbkdf2_sha256", "iterations": 1000, "salt": salt.hex(), "hash": digest.hex()}
    path.write_text(json.dumps({"users": {"p": entry}}))
    store = CredentialStore(path)
    assert store.verify("p", "pw") and not store.verify("p", "pw2")


@pytest.mark.parametrize(
    "stdin, ok",
    [("s3cret\n", True), ("s3cret\r\ns3cret\r\n", True), ("s3cret\nother\n", False), ("", False)],
)
def test_users_add_reads_stdin(tmp_path: Path, stdin: str, ok: bool) -> None:
    done = run_cli(["users", "add", "newuser"], tmp_path, stdin=stdin)
    assert "s3cret" not in done.stdout + done.stderr and "other" not in done.stdout + done.stderr
    if ok:
        assert done.returncode == 0, done.stderr
        assert CredentialStore(tmp_path / "credentials.json").verify("newuser", "s3cret")
    else:
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert not (tmp_path / "credentials.json").exists()


def test_users_add_rejects_bad_names(tmp_path: Path) -> None:
    done = run_cli(["users", "add", "../evil"], tmp_path, stdin="pw\n")
    assert done.returncode != 0 and done.stderr.count("\n") == 1 and "bad username" in done.stderr


def test_user_added_while_serving_can_log_in(tmp_path: Path) -> None:
    with running_service(tmp_path, users={"ethan": USERS["ethan"]}) as svc:
        assert svc.client("late", "pw").post("/button/click", json=CLICK).status_code == 401
        done = run_cli(["users", "add", "late"], svc.data_dir, stdin="pw\npw\n")
        assert done.returncode == 0, done.stderr
        import time

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the store re-reads a changed file within a second
            if svc.client("late", "pw").post("/button/click", json=CLICK).status_code == 200:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the new user never got in")
        assert isinstance(svc.client(None).get("/healthz"), httpx.Response)


def test_a_header_that_verified_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    import asyncio
    import os

    from service.auth import BasicAuth
    from service.errors import ApiError

    path = tmp_path / "c.json"
    store = CredentialStore(path)
    store.add_user("a", "pw")
    auth = BasicAuth(store, FailureLimiter(limit=100, window_seconds=60))

    def scope(user: str, password: str) -> dict:
        token = base64.b64encode(f"{user}:{password}".encode())
        return {"type": "http", "client": ("10.0.0.1", 1), "headers": [(b"authorization", b"Basic " + token)]}

    def outcome(user: str, password: str) -> str | int:
        try:
            return asyncio.run(auth.authenticate(scope(user, password)))
        except ApiError as exc:
            return exc.status

    header = scope("a", "pw")["headers"][0][1]
    assert store.known_header(header) is None
    assert outcome("a", "pw") == "a"
    assert store.known_header(header) == "a"  # the next request: a dict lookup
    assert outcome("a", "wrong") == 401 and store.known_header(scope("a", "wrong")["headers"][0][1]) is None
    store.add_user("a", "new")  # the file changed: the old password no longer works
    assert store.known_header(header) is None
    assert outcome("a", "pw") == 401
    assert outcome("a", "new") == "a"
    # A change by another process is seen within RELOAD_CHECK_SECONDS.
    CredentialStore(path).add_user("a", "newer")
    os.utime(path, ns=(1, 1))
    store._checked_at = float("-inf")
    assert outcome("a", "new") == 401 and outcome("a", "newer") == "a"
