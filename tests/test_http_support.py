"""Shared helpers of the HTTP tests: a REAL uvicorn server on 127.0.0.1, port 0,
in a background thread, called with httpx. (No tests here.)"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import httpx
import inject

from config.bindings import configure
from config.http_settings import service_settings
from config.settings import Settings, load_settings
from consumers.ports import CountStore
from producers.transport import TransportWriter
from config.transports import open_writer
from service.app import build_app
from service.auth import CredentialStore
from service.runner import ServerHandle, start_http_server
from service.settings import HttpSettings

PROJECT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, str(PROJECT / "run_stream_processing.py")]
SEED_DATA = Path("/work/shared/seed-data")
USERS = {"ethan": "xyz", "mia": "pässwörd 🔑"}


def make_settings(data_dir: Path, pipeline: Mapping[str, str] | None = None, **http: Any) -> Settings:
    """The default profile with `data_dir`, `[pipeline]` and `[http]` overrides
    (as the environment would give them)."""
    environ = {"RIVULET_DATA_DIR": str(data_dir)}
    for key, text in (pipeline or {}).items():
        environ[f"RIVULET__PIPELINE__{key.upper()}"] = text
    for key, value in http.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        environ[f"RIVULET__HTTP__{key.upper()}"] = text
    return load_settings(None, environ)


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVULET")}
    env.update(RIVULET_DATA_DIR=str(data_dir), PYTHONPATH=str(PROJECT), **extra)
    return env


def run_cli(args: Sequence[str], data_dir: Path, stdin: str | None = None, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout, cwd=PROJECT, env=cli_env(data_dir, **env)
    )


def drain_spool(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`consume --drain`: count everything the collector put on the spool."""
    done = run_cli(["consume", "--from", f"spool:{data_dir / 'spool'}", "--drain", "0.3", "--json"], data_dir)
    assert done.returncode == 0, done.stderr
    return done


def write_fast_credentials(path: Path, users: Mapping[str, str]) -> None:
    """A credentials file with cheap PBKDF2 entries: tests start many servers,
    and scrypt's cost (by design) would dominate them. `users add` and scrypt
    have tests of their own."""
    entries = {}
    for name, password in users.items():
        salt = os.urandom(16)
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 1000)
        entries[name] = {"kdf": "pbkdf2_sha256", "iterations": 1000, "salt": salt.hex(), "hash": digest.hex()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "users": entries}))


class RecordingWriter:
    """A transport writer that keeps what it was sent."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    def send(self, records: Sequence[bytes]) -> int:
        self.records.extend(records)
        return len(records)

    def close(self) -> None:
        pass


class Clock:
    """A settable collector clock (UTC epoch microseconds)."""

    def __init__(self, iso: str) -> None:
        self.set(iso)

    def set(self, iso: str) -> None:
        from streams.timestamps import parse_timestamp_us

        self.now_us = parse_timestamp_us(iso)

    def advance(self, seconds: float) -> None:
        self.now_us += int(seconds * 1_000_000)

    def __call__(self) -> int:
        return self.now_us


@dataclass
class Service:
    url: str
    settings: Settings
    http: HttpSettings
    data_dir: Path
    handle: ServerHandle
    writer: Any
    store: CountStore
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, user: str | None = "ethan", password: str | None = None, **options: Any) -> httpx.Client:
        auth = (user, password if password is not None else USERS[user]) if user else None
        client = httpx.Client(base_url=self.url, auth=auth, timeout=30, **options)
        self.clients.append(client)
        return client


@contextlib.contextmanager
def running_service(
    tmp_path: Path,
    writer: TransportWriter | None | str = "spool",
    users: Mapping[str, str] = USERS,
    readiness: Callable[[], Mapping[str, Any]] | None = None,
    optimizely_router: Any = None,
    clock_us: Callable[[], int] | None = None,
    pipeline: Mapping[str, str] | None = None,
    **http_overrides: Any,
) -> Iterator[Service]:
    """`clock_us` replaces the collector's clock (the acceptance window of
    client timestamps follows it); `pipeline` overrides `[pipeline]` keys,
    e.g. `{"lateness": '"3h"'}`."""
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, pipeline, **http_overrides)
    parsed = service_settings(settings)
    http = parsed.http
    configure(settings)
    write_fast_credentials(http.credentials_file, users)
    credentials = CredentialStore(http.credentials_file)
    if writer == "spool":
        writer = open_writer(http.transport, settings=settings, create_resources=False)
    store = inject.instance(CountStore)
    extra = {"clock_us": clock_us} if clock_us is not None else {}
    app = build_app(parsed, writer, store, credentials, optimizely_router, readiness=readiness, **extra)  # type: ignore[arg-type]
    handle = start_http_server(app, "127.0.0.1", 0)
    service = Service(handle.url, settings, http, data_dir, handle, writer, store)
    try:
        yield service
    finally:
        for client in service.clients:
            client.close()
        handle.stop()
        if app.state.context.committer is not None:
            app.state.context.committer.close()  # the idempotency ledger
        if writer is not None and hasattr(writer, "close"):
            writer.close()  # type: ignore[union-attr]
        store.close()
