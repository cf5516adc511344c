"""`sqs:QUEUE` writer: records as NDJSON message bodies on an SQS queue.

Usage::

    writer = SqsWriter("events", settings.aws, create_resources=True)   # creates the queue
    writer.send(lines)                    # NDJSON lines, without newline
    writer.take_rejected()                # records SQS can never carry

Records are packed, newline-separated, into message bodies of up to
`[aws] sqs_message_bytes` (default 64 KiB), and bodies into SendMessageBatch
calls of at most 10 entries and 256 KiB. Failed entries are resent with capped
exponential backoff and full jitter until `send_timeout`, then `TransportFull`.
A record over 256 KiB, containing a newline, or holding characters SQS does not
allow, is not sent: `take_rejected()` hands it to the caller to dead-letter.
The reader is `producers/sqs_reader.py`.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any, Callable, Sequence

import botocore.exceptions

from aws.errors import error_code
from aws.settings import AwsConfig
from producers.sqs_queue import MAX_BATCH_ENTRIES, open_queue, retryable
from producers.transport import RejectedRecord, TransportFull
from resilience.backoff import Backoff

MAX_BATCH_BYTES = 256 * 1024
MAX_MESSAGE_BYTES = 256 * 1024
# Characters SQS accepts in a message body.
_INVALID = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _why_unsendable(record: bytes) -> str | None:
    if len(record) > MAX_MESSAGE_BYTES:
        return f"record is {len(record)} bytes, an SQS message takes at most {MAX_MESSAGE_BYTES}"
    if b"\n" in record or b"\r" in record:
        return "record contains a line break (bodies are newline-delimited)"
    try:
        text = record.decode("utf-8")
    except UnicodeDecodeError:
        return "record is not UTF-8"
    if _INVALID.search(text):
        return "record holds characters SQS does not allow"
    return None


def pack_bodies(records: Sequence[bytes], max_bytes: int) -> tuple[list[str], list[RejectedRecord]]:
    """Newline-joined message bodies of at most `max_bytes` each (a single
    record larger than that gets a body of its own), and the rejected records."""
    bodies: list[str] = []
    rejected: list[RejectedRecord] = []
    current: list[bytes] = []
    size = 0
    for index, record in enumerate(records):
        record = bytes(record)
        why = _why_unsendable(record)
        if why:
            reason = "oversize" if len(record) > MAX_MESSAGE_BYTES else "sink rejected"
            rejected.append(RejectedRecord(index, record, why, reason))
            continue
        added = len(record) + (1 if current else 0)
        if current and size + added > max_bytes:
            bodies.append(b"\n".join(current).decode())
            current, size, added = [], 0, len(record)
        current.append(record)
        size += added
    if current:
        bodies.append(b"\n".join(current).decode())
    return bodies, rejected


class SqsWriter:
    def __init__(
        self,
        queue: str,
        config: AwsConfig,
        create_resources: bool = False,
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.client, self.queue_url = open_queue(queue, config, create_resources, client)
        self.queue = queue
        self._sleep = sleep
        self._backoff = Backoff(config.backoff_base, config.backoff_cap, rng=rng or random.Random())
        self._rejected: list[RejectedRecord] = []
        self.calls = 0
        self.messages_sent = 0

    def send(self, records: Sequence[bytes]) -> int:
        bodies, rejected = pack_bodies(records, self.config.sqs_message_bytes)
        self._rejected.extend(rejected)
        batch: list[str] = []
        size = 0
        for body in bodies:
            body_bytes = len(body.encode())
            if batch and (len(batch) == MAX_BATCH_ENTRIES or size + body_bytes > MAX_BATCH_BYTES):
                self._send_batch(batch)
                batch, size = [], 0
            batch.append(body)
            size += body_bytes
        if batch:
            self._send_batch(batch)
        return len(records) - len(rejected)

    def take_rejected(self) -> list[RejectedRecord]:
        rejected, self._rejected = self._rejected, []
        return rejected

    def _send_batch(self, bodies: list[str]) -> None:
        pending = {str(i): body for i, body in enumerate(bodies)}
        attempt = 0
        deadline = time.monotonic() + self.config.send_timeout
        while True:
            reason = ""
            try:
                self.calls += 1
                response = self.client.send_message_batch(
                    QueueUrl=self.queue_url, Entries=[{"Id": i, "MessageBody": b} for i, b in pending.items()]
                )
            except botocore.exceptions.ClientError as exc:
                if not retryable(exc):
                    raise
                reason = error_code(exc)
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
                reason = type(exc).__name__
            else:
                for ok in response.get("Successful", ()):
                    pending.pop(ok["Id"], None)
                    self.messages_sent += 1
                failed = response.get("Failed", ())
                for entry in failed:
                    if entry.get("SenderFault"):
                        raise ValueError(f"sqs queue {self.queue!r} refused a message: {entry.get('Code')}: {entry.get('Message')}")
                if not pending:
                    return
                reason = ", ".join(sorted({str(f.get("Code")) for f in failed})) or "entries missing from the response"
            if time.monotonic() >= deadline:
                raise TransportFull(f"sqs queue {self.queue!r}: {len(pending)} messages not accepted ({reason})")
            self._sleep(self._backoff.delay(attempt))
            attempt += 1

    def close(self) -> None:
        pass
