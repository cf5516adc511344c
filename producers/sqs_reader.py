"""`sqs:QUEUE` reader: the records of an SQS queue's NDJSON message bodies,
one partition, at least once.

Usage::

    reader = SqsReader("events", settings.aws)
    reader.batches().subscribe(on_batch)  # blocks until reader.stop()
    reader.commit("sqs:events", position) # deletes the messages before position

The delivery guarantee:

- long-poll ReceiveMessage (`sqs_wait_seconds`) on the subscribing thread;
  each record gets a position from a per-reader counter, so the queue is one
  partition, `sqs:QUEUE`;
- a received message is *held*: a background thread extends its visibility
  (ChangeMessageVisibilityBatch) before it lapses, for as long as it is held;
- `commit(partition, P)` deletes (DeleteMessageBatch) exactly the held
  messages whose every record is before P, i.e. is durable in every sink. A
  message is never deleted earlier; a crash before the delete makes SQS
  deliver it again. Delivery is at-least-once: duplicates within the dedup
  horizon are dropped by the window counter, and the count store's max-upsert
  never double counts a replayed window;
- at most `sqs_max_held_messages` are held (default 100,000, under SQS's
  120,000 in-flight limit); when full, the reader stops receiving until
  commits free room. Messages stay held until the windows they fed are final,
  so size the bound for (event rate x window length) / records per message.

The writer is `producers/sqs_writer.py`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import botocore.exceptions
import reactivex
from reactivex import abc

from aws.settings import AwsConfig
from producers.sqs_queue import MAX_BATCH_ENTRIES, open_queue, retryable
from producers.transport import blocking_observable, wall_clock_us
from resilience.backoff import Backoff, sleep_unless
from streams.batches import RecordBatch

log = logging.getLogger(__name__)


@dataclass
class _Held:
    receipt: str
    end: int  # positions of the message's records are < end
    visible_at: float  # monotonic time its visibility lapses


class SqsReader:
    def __init__(
        self,
        queue: str,
        config: AwsConfig,
        create_resources: bool = False,
        poll_interval: float = 0.2,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.client, self.queue_url = open_queue(queue, config, create_resources, client)
        self.queue = queue
        self.partition = f"sqs:{queue}"
        self.poll_interval = poll_interval
        self.visibility = self.config.sqs_visibility_timeout
        self._clock = clock
        self._backoff = Backoff(0.2, 10.0)  # between failed receives
        self._held: dict[str, _Held] = {}  # by receipt handle
        self._lock = threading.Lock()
        self._next_position = 1
        self._stopped = False
        self._caught_up_since: float | None = None
        self._extender: threading.Thread | None = None
        self._extender_stop = threading.Event()
        self.deleted = 0
        self.extended = 0

    # -- reading --------------------------------------------------------------

    def batches(self) -> reactivex.Observable:
        return blocking_observable(self._loop, cleanup=self._extender_stop.set)

    def _loop(self, observer: abc.ObserverBase) -> None:
        self._extender = threading.Thread(target=self._extend_loop, name="sqs-visibility", daemon=True)
        self._extender.start()
        last_poll = self._clock()
        failures = 0
        paused = False
        while not self._stopped:
            room = self.config.sqs_max_held_messages - self.held()
            if room <= 0:
                # Held messages wait for commits; receiving more would pass
                # the in-flight bound. If the open windows alone hold that
                # many messages, no commit comes: said once per pause, loudly.
                if not paused:
                    paused = True
                    log.warning("sqs %s: %d messages held, the bound (sqs_max_held_messages); receiving pauses "
                                "until a commit frees room. A message is held until the windows it fed are "
                                "final: if the open windows hold more messages than the bound, the stream "
                                "stalls; raise the bound or shorten the longest window", self.queue, self.held())
                sleep_unless(lambda: self._stopped, self.poll_interval)
                continue
            if paused:
                paused = False
                log.info("sqs %s: receiving again, %d messages held", self.queue, self.held())
            try:
                response = self.client.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=min(10, room),
                    WaitTimeSeconds=self.config.sqs_wait_seconds,
                    VisibilityTimeout=self.visibility,
                )
                failures = 0
            except (botocore.exceptions.ClientError, botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
                if isinstance(exc, botocore.exceptions.ClientError) and not retryable(exc):
                    raise
                # An outage: held messages stay held (and extended); try again.
                failures += 1
                log.warning("sqs %s: receive failed (%s); retrying", self.queue, type(exc).__name__)
                sleep_unless(lambda: self._stopped, self._backoff.delay(failures))
                continue
            now = self._clock()
            messages = response.get("Messages", [])
            if messages:
                self._caught_up_since = None
                records, positions = self._hold(messages, now)
                if records:
                    observer.on_next(RecordBatch.data(self.partition, records, positions, wall_clock_us()))
            else:
                if self._caught_up_since is None:
                    self._caught_up_since = now
                observer.on_next(RecordBatch.idle(self.partition, now - last_poll))
                if self.config.sqs_wait_seconds == 0:
                    sleep_unless(lambda: self._stopped, self.poll_interval)
            last_poll = now
        observer.on_completed()

    def _hold(self, messages: list[dict[str, Any]], now: float) -> tuple[list[bytes], list[int]]:
        records: list[bytes] = []
        positions: list[int] = []
        with self._lock:
            for message in messages:
                lines = [line for line in message["Body"].encode().split(b"\n") if line]
                start = self._next_position
                self._next_position += len(lines)
                records.extend(lines)
                positions.extend(range(start, self._next_position))
                self._held[message["ReceiptHandle"]] = _Held(message["ReceiptHandle"], self._next_position, now + self.visibility)
        return records, positions

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    # -- visibility -----------------------------------------------------------

    def _extend_loop(self) -> None:
        interval = max(0.5, self.visibility / 4)
        while not self._extender_stop.wait(interval):
            try:
                self.extend_due()
            except Exception as exc:  # noqa: BLE001 - a lapse means redelivery, not loss
                log.warning("sqs %s: extending visibility failed: %s", self.queue, exc)

    def extend_due(self) -> int:
        """Extend every held message whose visibility lapses within half a timeout."""
        now = self._clock()
        with self._lock:
            due = [h for h in self._held.values() if h.visible_at - now < self.visibility / 2]
        for i in range(0, len(due), MAX_BATCH_ENTRIES):
            chunk = due[i : i + MAX_BATCH_ENTRIES]
            self.client.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(j), "ReceiptHandle": h.receipt, "VisibilityTimeout": self.visibility} for j, h in enumerate(chunk)],
            )
            for h in chunk:
                h.visible_at = now + self.visibility
        self.extended += len(due)
        return len(due)

    # -- control --------------------------------------------------------------

    def commit(self, partition: str, position: int, watermark_us: int | None = None) -> None:
        """Delete the held messages whose records are all before `position`."""
        if partition != self.partition:
            raise ValueError(f"unknown partition {partition!r}: this reader reads {self.partition!r}")
        with self._lock:
            done = [h for h in self._held.values() if h.end <= position]
        for i in range(0, len(done), MAX_BATCH_ENTRIES):
            chunk = done[i : i + MAX_BATCH_ENTRIES]
            response = self.client.delete_message_batch(
                QueueUrl=self.queue_url, Entries=[{"Id": str(j), "ReceiptHandle": h.receipt} for j, h in enumerate(chunk)]
            )
            for failure in response.get("Failed", ()):
                # An expired receipt handle: SQS will redeliver; counted at most once more.
                log.warning("sqs %s: delete failed: %s", self.queue, failure.get("Code"))
            with self._lock:
                for h in chunk:
                    self._held.pop(h.receipt, None)
            self.deleted += len(chunk)

    def stop(self) -> None:
        self._stopped = True

    def caught_up_seconds(self) -> float:
        since = self._caught_up_since
        return 0.0 if since is None else self._clock() - since

    def close(self) -> None:
        self.stop()
        self._extender_stop.set()
