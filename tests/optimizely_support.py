"""Helpers for the tests/test_optimizely_*.py modules: a recording HTTP
server on 127.0.0.1:0, an in-memory dead-letter sink, the Event API schema,
test datafiles and SDK clients that never reach a real Optimizely host."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Sequence

import jsonschema
from optimizely import optimizely as optimizely_sdk
from optimizely.event.event_processor import ForwardingEventProcessor
from optimizely.helpers.sdk_settings import OptimizelySdkSettings

from streams.events import DeadLetter

FIXTURES = Path(__file__).parent / "fixtures" / "optimizely"
DATAFILE_PATH = FIXTURES / "datafile_rev7.json"
SCHEMA = json.loads((FIXTURES / "event-batch.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def datafile_text(revision: str = "7", **changes: Any) -> str:
    """The test datafile, optionally with another revision or top-level fields."""
    data = json.loads(DATAFILE_PATH.read_text())
    data["revision"] = revision
    data.update(changes)
    return json.dumps(data)


def schema_errors(body: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(body)]


# Behaviour of the recording server for request number i (0-based, per path):
# returns (status, response body, seconds to wait before answering).
Behaviour = Callable[[int, bytes], tuple[int, bytes, float]]


def always(status: int = 204, delay: float = 0.0) -> Behaviour:
    return lambda i, body: (status, b"", delay)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class RecordingServer:
    """A real HTTP server in a thread. `post_behaviour` answers POSTs;
    `get_body` (mutable) is what GET returns. Every request is recorded."""

    post_behaviour: Behaviour = field(default_factory=always)
    get_body: bytes = b""
    get_status: int = 200
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real endpoint

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer._lock:
                    i = outer._posts
                    outer._posts += 1
                status, answer, delay = outer.post_behaviour(i, body)
                if delay:
                    time.sleep(delay)
                with outer._lock:
                    outer.requests.append(Recorded("POST", self.path, dict(self.headers), body, status))
                self._answer(status, answer)

            def do_GET(self) -> None:
                with outer._lock:
                    outer.requests.append(Recorded("GET", self.path, dict(self.headers), b"", outer.get_status))
                    status, body = outer.get_status, outer.get_body
                self._answer(status, body)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="recording-server", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def accepted_bodies(self) -> list[dict]:
        with self._lock:
            return [json.loads(r.body) for r in self.requests if r.method == "POST" and 200 <= r.status < 300]

    def posts(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and hang up are part of the tests


class ListDeadLetters:
    """A DeadLetterSink in memory (thread-safe)."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self.flushes = 0
        self._lock = threading.Lock()

    def write(self, letters: Sequence[DeadLetter]) -> None:
        with self._lock:
            self.letters.extend(letters)

    def flush(self) -> None:
        with self._lock:
            self.flushes += 1

    def close(self) -> None:
        pass


class CapturingDispatcher:
    """Records LogEvents (deep copies of their params) and forwards them."""

    def __init__(self, forward: Any = None) -> None:
        self.events: list[tuple[str, dict]] = []
        self.forward = forward
        self._lock = threading.Lock()

    def dispatch_event(self, log_event: Any) -> None:
        with self._lock:
            self.events.append((log_event.url, json.loads(json.dumps(log_event.params))))
        if self.forward is not None:
            self.forward.dispatch_event(log_event)


def sdk_client(datafile: str, dispatcher: Any, batch_size: int | None = None) -> Any:
    """An SDK client that sends only through `dispatcher`: forwarding (one
    LogEvent per event) or, with `batch_size`, the SDK's BatchEventProcessor."""
    kwargs: dict[str, Any] = {}
    if batch_size is None:
        kwargs["event_processor"] = ForwardingEventProcessor(dispatcher)
    else:
        kwargs["event_processor_options"] = {"batch_size": batch_size, "flush_interval": 0.2}
    return optimizely_sdk.Optimizely(
        datafile=datafile,
        event_dispatcher=dispatcher,
        skip_json_validation=False,
        settings=OptimizelySdkSettings(odp_disabled=True),
        **kwargs,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def visitors_by_uuid(bodies: Sequence[dict]) -> dict[str, list[dict]]:
    """Each event uuid → the visitor entries it appears in (one, if nothing is duplicated)."""
    out: dict[str, list[dict]] = {}
    for body in bodies:
        for visitor in body["visitors"]:
            for snapshot in visitor["snapshots"]:
                for event in snapshot["events"]:
                    out.setdefault(event["uuid"], []).append(visitor)
    return out
