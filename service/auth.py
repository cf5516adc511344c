"""HTTP Basic auth against a file of salted password hashes.

The credentials file is JSON, one entry per user, written only by
`users add` (atomically, mode 0600)::

    {"version": 1, "users": {"ethan": {"kdf": "scrypt", "n": 16384, "r": 8, "p": 1,
                                       "salt": "<hex>", "hash": "<hex>"}}}

`pbkdf2_sha256` entries (`"iterations": N`) are accepted too. A KDF costs tens
of milliseconds by design, so a password that verified once is remembered as
an HMAC under a per-process random key (never the password itself) until the
file changes; a collector taking thousands of requests a second from one
client then pays the KDF once. The `Authorization` header values that
verified are remembered too (until the file changes), so that the next
request with the same header costs one dict lookup: no base64, no HMAC. The
lookup is keyed by the header's bytes, hashed with the interpreter's keyed
string hash, so its timing tells nothing about a guess, as the HMAC keys do.

Failures are counted (`rivulet_http_auth_failures_total`) and rate-limited per
client address with a token bucket: each failure takes a token; with none
left, every attempt from that client gets 429 and `Retry-After` until the
bucket refills, so passwords cannot be guessed at line rate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.models import HTTPBase as HTTPBaseModel
from fastapi.security.base import SecurityBase

from service.errors import ApiError
from service.metrics import AUTH_FAILURES

REALM = "rivulet"
CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
HASH_BYTES = 32
MAX_PASSWORD_CHARS = 1024
# Usernames become customer ids and parts of object keys: keep them plain.
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
RELOAD_CHECK_SECONDS = 1.0
MAX_REMEMBERED = 10_000


class CredentialsError(ValueError):
    """A bad username, password or credentials file (one line)."""


def validate_username(name: str) -> str:
    if not USERNAME.fullmatch(name):
        raise CredentialsError(
            f"bad username {name[:70]!r}: use 1-64 of A-Z a-z 0-9 . _ @ + -, starting with a letter or digit"
        )
    return name


def validate_password(password: str) -> str:
    if not password:
        raise CredentialsError("the password is empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise CredentialsError(f"the password is longer than {MAX_PASSWORD_CHARS} characters")
    return password


def hash_password(password: str) -> dict[str, Any]:
    """A new scrypt entry with a fresh 16-byte salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_BYTES)
    return {"kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex(), "hash": digest.hex()}


def _derive(entry: Mapping[str, Any], password: bytes) -> bytes:
    salt = bytes.fromhex(entry["salt"])
    size = len(bytes.fromhex(entry["hash"]))
    if entry["kdf"] == "scrypt":
        n, r, p = int(entry["n"]), int(entry["r"]), int(entry["p"])
        return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=size, maxmem=256 * 1024 * 1024)
    if entry["kdf"] == "pbkdf2_sha256":
        return hashlib.pbkdf2_hmac("sha256", password, salt, int(entry["iterations"]), dklen=size)
    raise CredentialsError(f"unknown kdf {entry['kdf']!r}")


def verify_entry(entry: Mapping[str, Any], password: str) -> bool:
    """Constant-time check of `password` against one stored entry."""
    try:
        expected = bytes.fromhex(entry["hash"])
        actual = _derive(entry, password.encode("utf-8", "surrogatepass"))
    except (KeyError, ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# Verified against when the user does not exist, so that an unknown name takes
# as long as a wrong password and names cannot be probed by timing.
_DUMMY = {"kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": "00" * 16, "hash": "00" * HASH_BYTES}


class CredentialStore:
    """The users of one credentials file, re-read when the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._users: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked_at = -math.inf
        self._error: str | None = None
        self._key = secrets.token_bytes(32)
        self._remembered: OrderedDict[bytes, str] = OrderedDict()
        self._headers: dict[bytes, tuple[str, int]] = {}  # header value -> (user, generation)
        self.generation = 0  # bumped when the file changes
        self._inflight: dict[bytes, threading.Event] = {}
        self._reload(force=True)

    # -- reading ------------------------------------------------------------------

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < RELOAD_CHECK_SECONDS:
            return
        self._checked_at = now
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and not force:
            return
        try:
            users = load_users(self.path) if stamp is not None else {}
            error = None if users else f"no users in {self.path}; add one with `users add NAME`"
        except CredentialsError as exc:
            users, error = {}, str(exc)
        self._users, self._stamp, self._error = users, stamp, error
        self._remembered.clear()  # a changed file may have changed a password
        self._headers.clear()
        self.generation += 1

    def status(self) -> tuple[bool, str]:
        """(usable, detail) for readiness."""
        with self._lock:
            self._reload()
            if self._error:
                return False, self._error
            return True, f"{len(self._users)} user(s) in {self.path}"

    def _token(self, username: str, password: str) -> bytes:
        raw = username.encode("utf-8", "surrogatepass") + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, raw, "sha256").digest()

    def remembered(self, username: str, password: str) -> bool:
        """True when these credentials verified before and the file is unchanged:
        microseconds, no KDF, so it may run on the event loop."""
        token = self._token(username, password)
        with self._lock:
            self._reload()
            if username in self._users and self._remembered.get(token) == username:
                self._remembered.move_to_end(token)
                return True
        return False

    def known_header(self, header: bytes) -> str | None:
        """The user of an `Authorization` header value that verified before,
        the file unchanged since (checked once a second, as for `remembered`)."""
        if time.monotonic() - self._checked_at >= RELOAD_CHECK_SECONDS:
            with self._lock:
                self._reload()
        found = self._headers.get(header)
        if found is not None and found[1] == self.generation:
            return found[0]
        return None

    def remember_header(self, header: bytes, username: str, generation: int) -> None:
        """`header` verified as `username` against the file of `generation`
        (read before the check: a file changed meanwhile keeps it out)."""
        with self._lock:
            if generation != self.generation:
                return
            if len(self._headers) >= MAX_REMEMBERED:
                self._headers.clear()
            self._headers[header] = (username, generation)

    def verify(self, username: str, password: str) -> bool:
        """True when `password` is `username`'s; costs one KDF unless remembered."""
        token = self._token(username, password)
        with self._lock:
            self._reload()
            entry = self._users.get(username)
            if entry is not None and self._remembered.get(token) == username:
                self._remembered.move_to_end(token)
                return True
            # Many connections opening at once with the same credentials would
            # each pay the KDF (tens of ms of CPU); one computes, the rest wait.
            running = self._inflight.get(token)
            if running is None:
                running = self._inflight[token] = threading.Event()
                owner = True
            else:
                owner = False
        if not owner:
            running.wait(10)
            with self._lock:
                if self._remembered.get(token) == username and username in self._users:
                    return True
            # The owner failed (a wrong password): check for ourselves, same cost.
            return verify_entry(entry if entry is not None else _DUMMY, password) and entry is not None
        try:
            ok = verify_entry(entry if entry is not None else _DUMMY, password) and entry is not None
            if ok:
                with self._lock:
                    self._remembered[token] = username
                    while len(self._remembered) > MAX_REMEMBERED:
                        self._remembered.popitem(last=False)
            return ok
        finally:
            with self._lock:
                self._inflight.pop(token, None)
            running.set()

    # -- writing ------------------------------------------------------------------

    def add_user(self, username: str, password: str) -> bool:
        """Add or replace a user; True if it was new. Writes atomically, mode 0600."""
        validate_username(username)
        validate_password(password)
        with self._lock:
            users = load_users(self.path) if self.path.exists() else {}
            created = username not in users
            users[username] = hash_password(password)
            _write_atomic(self.path, {"version": 1, "users": users})
            self._reload(force=True)
        return created


def load_users(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CredentialsError(f"credentials file {path} is unreadable: {exc}") from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict) or not all(isinstance(v, dict) for v in users.values()):
        raise CredentialsError(f"credentials file {path}: expected {{\"users\": {{NAME: {{...}}}}}}")
    return users


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".credentials.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)  # hashes only, but still nobody else's business
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- rate limiting ------------------------------------------------------------------


@dataclass
class _Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    """A token bucket per client: `limit` failures, refilled over `window_seconds`."""

    def __init__(
        self, limit: int, window_seconds: float, clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000
    ) -> None:
        self.limit = limit
        self.rate = limit / window_seconds  # tokens per second
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def _bucket(self, client: str, now: float) -> _Bucket:
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(float(self.limit), now)
            while len(self._buckets) > self.max_clients:  # memory stays bounded under a scan
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(float(self.limit), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets.move_to_end(client)
        return bucket

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again; 0 when it may now."""
        if client not in self._buckets:  # no failure: no lock (a dict lookup is atomic)
            return 0
        with self._lock:
            if client not in self._buckets:
                return 0
            bucket = self._bucket(client, self.clock())
            if bucket.tokens >= 1:
                return 0
            return max(1, math.ceil((1 - bucket.tokens) / self.rate))

    def failed(self, client: str) -> None:
        with self._lock:
            bucket = self._bucket(client, self.clock())
            bucket.tokens = max(0.0, bucket.tokens - 1)


# -- the FastAPI dependency ----------------------------------------------------------


def _unauthorized(message: str, reason: str) -> ApiError:
    AUTH_FAILURES.labels(reason).inc()
    return ApiError(401, message, headers=CHALLENGE)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(username, password) of a Basic `Authorization` header, None if malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    username, sep, password = text.partition(":")
    return (username, password) if sep else None


class BasicAuth(SecurityBase):
    """`Depends(auth)` yields the authenticated username or raises 401/429.

    A `SecurityBase`, so that FastAPI declares the `basic` security scheme in
    the OpenAPI document for every route that depends on it."""

    def __init__(self, store: CredentialStore, limiter: FailureLimiter) -> None:
        self.store = store
        self.limiter = limiter
        self.model = HTTPBaseModel(scheme="basic", description="a user of the credentials file (`users add NAME`)")
        self.scheme_name = "basic"

    async def __call__(self, request: Request) -> str:
        return await self.authenticate(request.scope)

    async def authenticate(self, scope: Any) -> str:
        """The user of an ASGI request's Basic credentials, or 401/429."""
        address = scope.get("client")
        client = address[0] if address else "unknown"
        wait = self.limiter.retry_after(client)
        if wait:
            AUTH_FAILURES.labels("rate_limited").inc()
            raise ApiError(429, f"too many failed logins; retry in {wait} s", headers={"Retry-After": str(wait)})
        header = authorization(scope)
        if not header:
            # No credentials is the normal first step of a browser, not an attack.
            raise _unauthorized("authentication required", "missing")
        known = self.store.known_header(header)
        if known is not None:
            return known
        parsed = parse_basic(header.decode("latin-1"))
        if parsed is None:
            self.limiter.failed(client)
            raise _unauthorized("malformed Basic credentials", "malformed")
        username, password = parsed
        generation = self.store.generation
        if len(password) <= MAX_PASSWORD_CHARS:
            # The KDF takes tens of ms of CPU: on a worker thread, never the event loop.
            if self.store.remembered(username, password) or await run_in_threadpool(self.store.verify, username, password):
                self.store.remember_header(header, username, generation)
                return username
        self.limiter.failed(client)
        raise _unauthorized("bad username or password", "bad_credentials")


def authorization(scope: Any) -> bytes | None:
    """The first `Authorization` header of an ASGI request, as sent (the
    server gives header names in lower case)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value
    return None
