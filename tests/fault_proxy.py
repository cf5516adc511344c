"""A fault-injecting HTTP proxy in front of the moto server.

moto never throttles, never fails PutRecords partially and never expires an
iterator, so tests put this proxy between boto3 and moto and inject exactly
those faults:

    proxy = FaultProxy(moto_endpoint)          # listens on 127.0.0.1, port 0
    kinesis = client("kinesis", proxy.endpoint)
    proxy.error("Kinesis_20131202.PutRecords", "ProvisionedThroughputExceededException", times=2)
    proxy.error("Kinesis_20131202.GetRecords", "ExpiredIteratorException", after=1)   # the 2nd call fails
    proxy.fail_entries(lambda i, n: i % 3 == 0, times=1)   # FailedRecordCount > 0
    proxy.unprocessed(lambda i, n: i < n // 2, times=2)     # BatchWriteItem UnprocessedItems
    proxy.rewrite("Kinesis_20131202.GetRecords", lambda body: {**body, "MillisBehindLatest": 5000}, times=3)
    proxy.refuse(seconds=2)                    # nothing listens: ECONNREFUSED
    proxy.reset(seconds=2)                     # accept, then drop the connection
    proxy.calls("Kinesis_20131202.PutRecords") # requests seen (forwarded or not)
    proxy.close()

Rules match the `X-Amz-Target` header of JSON-protocol services (Kinesis,
DynamoDB, SQS) or, for REST services (S3), `"METHOD /path-prefix"`. Each rule
applies to its next `times` matching requests (`None`: forever). Failed
PutRecords entries are *not* forwarded, as on AWS, where a failed entry is not
written; the response merges moto's results for the rest at the right indices.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

PUT_RECORDS = "Kinesis_20131202.PutRecords"
GET_RECORDS = "Kinesis_20131202.GetRecords"
BATCH_WRITE_ITEM = "DynamoDB_20120810.BatchWriteItem"
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class _Rule:
    match: str
    kind: str  # "error" | "fail_entries" | "rewrite"
    times: int | None
    code: str = ""
    status: int = 400
    select: Callable[[int, int], bool] | None = None
    transform: Callable[[dict], dict] | None = None
    after: int = 0  # let this many matching requests pass first
    seen: int = 0
    hits: int = 0

    def applies(self, target: str) -> bool:
        return target == self.match or (self.match.startswith(("GET ", "PUT ", "POST ", "DELETE ", "HEAD ")) and target.startswith(self.match))


@dataclass
class Call:
    target: str
    status: int
    records: int = 0  # PutRecords entries sent by the client
    forwarded: int = 0  # PutRecords entries passed to moto
    at: float = field(default_factory=time.monotonic)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._rules: list[_Rule] = []
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._reset_until = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._listen()

    # -- lifecycle ------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self._shutdown()

    # -- faults ---------------------------------------------------------------

    def error(self, target: str, code: str, times: int | None = 1, status: int = 400, after: int = 0) -> None:
        """Answer matching requests (after the first `after`) with an AWS JSON error instead of forwarding."""
        self._add(_Rule(target, "error", times, code=code, status=status, after=after))

    def fail_entries(
        self, select: Callable[[int, int], bool], times: int | None = 1, code: str = "ProvisionedThroughputExceededException"
    ) -> None:
        """PutRecords: entries i (of n) with select(i, n) fail with `code` and are not written."""
        self._add(_Rule(PUT_RECORDS, "fail_entries", times, code=code, select=select))

    def unprocessed(self, select: Callable[[int, int], bool], times: int | None = 1) -> None:
        """DynamoDB BatchWriteItem: entries i (of n) with select(i, n) are not
        written and come back in `UnprocessedItems`, as under throttling."""
        self._add(_Rule(BATCH_WRITE_ITEM, "unprocessed", times, select=select))

    def rewrite(self, target: str, transform: Callable[[dict], dict], times: int | None = 1) -> None:
        """Forward, then replace the JSON response body with transform(body)."""
        self._add(_Rule(target, "rewrite", times, transform=transform))

    def refuse(self, seconds: float) -> None:
        """Stop listening for `seconds` (clients get ECONNREFUSED), then listen again on the same port.
        A connection accepted before is dropped at its next request over that time: closing the
        listener alone would leave a client's kept-alive connections served all along."""
        self._reset_until = time.monotonic() + seconds
        self._shutdown()
        threading.Timer(seconds, self._listen).start()

    def reset(self, seconds: float) -> None:
        """For `seconds`, accept connections and close them without an answer."""
        self._reset_until = time.monotonic() + seconds

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def calls(self, target: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if target is None or c.target == target]

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def _take_rule(self, target: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if not rule.applies(target):
                    continue
                rule.seen += 1
                if rule.seen > rule.after and (rule.times is None or rule.hits < rule.times):
                    rule.hits += 1
                    return rule
        return None

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        proxy = self.owner
        if time.monotonic() < proxy._reset_until:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        body = self._body()
        target = self.headers.get("X-Amz-Target") or f"{self.command} {self.path}"
        rule = proxy._take_rule(target)
        if rule is not None and rule.kind == "error":
            proxy._record(Call(target, rule.status))
            self._reply(rule.status, {"Content-Type": "application/x-amz-json-1.1"},
                        json.dumps({"__type": rule.code, "message": f"injected {rule.code}"}).encode())
            return
        if rule is not None and rule.kind == "fail_entries":
            self._partial_put_records(body, rule)
            return
        if rule is not None and rule.kind == "unprocessed":
            self._partial_batch_write(body, rule)
            return
        status, headers, payload = self._forward(body)
        if rule is not None and rule.kind == "rewrite" and status == 200 and rule.transform is not None:
            payload = json.dumps(rule.transform(json.loads(payload))).encode()
            headers.pop("x-amz-crc32", None)
        records = len(json.loads(body).get("Records", [])) if target == PUT_RECORDS else 0
        proxy._record(Call(target, status, records, records))
        self._reply(status, headers, payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def _partial_put_records(self, body: bytes, rule: _Rule) -> None:
        request = json.loads(body)
        entries = request["Records"]
        n = len(entries)
        assert rule.select is not None
        failing = {i for i in range(n) if rule.select(i, n)}
        kept = [e for i, e in enumerate(entries) if i not in failing]
        upstream_results: list[dict] = []
        status, headers = 200, {"Content-Type": "application/x-amz-json-1.1"}
        failed_upstream = 0
        if kept:
            status, headers, payload = self._forward(json.dumps({**request, "Records": kept}).encode())
            if status != 200:
                self.owner._record(Call(PUT_RECORDS, status, n, len(kept)))
                self._reply(status, headers, payload)
                return
            answer = json.loads(payload)
            upstream_results = answer["Records"]
            failed_upstream = answer.get("FailedRecordCount", 0)
        results = []
        upstream = iter(upstream_results)
        for i in range(n):
            if i in failing:
                results.append({"ErrorCode": rule.code, "ErrorMessage": f"injected {rule.code}"})
            else:
                results.append(next(upstream))
        headers.pop("x-amz-crc32", None)
        self.owner._record(Call(PUT_RECORDS, 200, n, len(kept)))
        self._reply(200, headers, json.dumps({"FailedRecordCount": len(failing) + failed_upstream, "Records": results}).encode())

    def _partial_batch_write(self, body: bytes, rule: _Rule) -> None:
        request = json.loads(body)
        assert rule.select is not None
        kept: dict[str, list] = {}
        held: dict[str, list] = {}
        for table, entries in request["RequestItems"].items():
            n = len(entries)
            for i, entry in enumerate(entries):
                (held if rule.select(i, n) else kept).setdefault(table, []).append(entry)
        unprocessed: dict[str, list] = dict(held)
        status, headers = 200, {"Content-Type": "application/x-amz-json-1.0"}
        if kept:
            status, headers, payload = self._forward(json.dumps({**request, "RequestItems": kept}).encode())
            if status != 200:
                self.owner._record(Call(BATCH_WRITE_ITEM, status))
                self._reply(status, headers, payload)
                return
            for table, entries in json.loads(payload).get("UnprocessedItems", {}).items():
                unprocessed.setdefault(table, []).extend(entries)
        headers.pop("x-amz-crc32", None)
        self.owner._record(Call(BATCH_WRITE_ITEM, 200))
        self._reply(200, headers, json.dumps({"UnprocessedItems": unprocessed}).encode())

    def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS and k.lower() != "content-length"}
        headers["Content-Length"] = str(len(body))
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            out = {k.lower(): v for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS}
            return response.status, out, payload
        finally:
            connection.close()

    def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        length = headers.get("content-length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
