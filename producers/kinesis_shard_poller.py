"""The poller of one Kinesis shard: GetRecords on its own thread, its user
records as `RecordBatch`es handed to the reader's queue.

Usage::

    shard = ShardState(shard_id, partition, start={"ShardIteratorType": "TRIM_HORIZON"})
    ShardPoller(shard, client, settings, put, stopped=lambda: reader_stopped).start()

- At most `polls_per_second` GetRecords a second (`Limit` up to
  `get_records_limit`); throttling and outages back off (`resilience.backoff`),
  and from the OUTAGE_AFTER_FAILED_POLLS-th failure in a row on, the health
  model hears of it (readiness, the systemd watchdog).
- An expired iterator is renewed AFTER_SEQUENCE_NUMBER the last record read
  (or from the original start if none was read yet).
- IDLE: only a poll that returns no records while MillisBehindLatest is 0
  emits an IDLE batch, whose `idle_seconds` is the wall time since that
  shard's previous poll; so an idle shard's watermark advances with the wall
  clock and does not hold windows open, and a lagging shard never idles.
- KPL aggregated records are de-aggregated with `aws_kinesis_agg`.
- A closed shard read to its end (no NextShardIterator) emits EOF.
- A child shard first replays its ancestors' tails as INHERITED batches
  (docs/aws.md, "Resharding"); the first, empty, one opens the child's
  state at the highest ancestor tail watermark.
- It stops at its next step once the reader stops or `shard.active` turns
  false (the lease was lost or handed back).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import botocore.exceptions

import six  # noqa: F401  - aws_kinesis_agg imports it without declaring it
from aws_kinesis_agg import MAGIC
from aws_kinesis_agg.deaggregator import iter_deaggregate_records

from observability.health import HEALTH, PipelineHealth
from observability.metrics import MILLIS_BEHIND
from aws.errors import error_code
from producers.kinesis_lease_table import Tail
from producers.kinesis_positions import SequenceMarks
from producers.kinesis_settings import KinesisReaderSettings
from producers.transport import wall_clock_us
from resilience.backoff import Backoff, sleep_unless
from streams.batches import RecordBatch
from streams.windowing import WATERMARK_MIN

RETRYABLE_READ_CODES = frozenset({
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "LimitExceededException",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "KMSThrottlingException",
})
# A throttled poll is ordinary on a shared shard; this many in a row is an
# outage, reported to the health model (readiness, the systemd watchdog).
OUTAGE_AFTER_FAILED_POLLS = 3

log = logging.getLogger(__name__)

# What a poller hands over: a batch, or what ended it.
Put = Callable[["ShardState", "RecordBatch | BaseException"], None]


def user_records(record: Mapping[str, Any]) -> list[bytes]:
    """The user records of one GetRecords record: itself, or its KPL sub-records."""
    data: bytes = record["Data"]
    if not data.startswith(MAGIC):
        return [data]
    out = []
    for sub in iter_deaggregate_records([dict(record)], data_format="Boto3"):
        kinesis = sub["kinesis"]
        if kinesis.get("aggregated"):
            out.append(base64.b64decode(kinesis["data"]))
        else:  # the magic bytes, but not a valid aggregate: the data as it is
            out.append(kinesis["data"])
    return out


@dataclass
class ShardState:
    """One shard this worker holds the lease of: where its reading is, what
    the pipeline has taken and what is committed."""

    shard_id: str
    partition: str
    start: dict[str, Any]  # GetShardIterator arguments
    skip_below: int = 0  # positions below this were durable before the restart
    committed: int = 0
    next_position: int = 0  # of the next user record read (of sub-record 0 if it is an aggregate)
    last_sequence: str | None = None
    caught_up_since: float | None = None  # since when polls find the tip (poller's view)
    undelivered: int = 0  # DATA batches queued but not yet handed to the pipeline
    delivered_at: float = 0.0  # when the pipeline last finished a DATA batch of this shard
    finished: bool = False  # SHARD_END read (the poller ended)
    polls: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)
    active: bool = True  # False once the lease is lost, handed back or retired
    resume_watermark_us: int | None = None  # for the first batch of this ownership
    resume_pending: bool = True
    end_position: int = 0  # after SHARD_END: everything before this was delivered
    eof_taken: bool = False  # the pipeline took the EOF batch
    retired: bool = False
    behind_ms: int | None = None
    # The last checkpoint with a known watermark (kept in the lease when it
    # finishes), and the ancestors whose tails are replayed first (a child).
    tail: Tail | None = None
    inherits: list[tuple[str, Tail | None]] = field(default_factory=list)
    pending: collections.deque = field(default_factory=collections.deque, repr=False)  # (last position, taken at)
    marks: SequenceMarks = field(default_factory=SequenceMarks, repr=False)


class ShardPoller:
    def __init__(
        self,
        shard: ShardState,
        client: Any,
        settings: KinesisReaderSettings,
        put: Put,
        stopped: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        wall_clock_us: Callable[[], int] = wall_clock_us,
        health: PipelineHealth = HEALTH,
    ) -> None:
        self.shard = shard
        self.client = client
        self.settings = settings
        self.put = put
        self.stopped = stopped
        self.clock = clock
        self.wall_clock_us = wall_clock_us
        self.health = health
        self.backoff = Backoff(base=0.2, cap=10.0)
        self.min_gap = 1.0 / settings.polls_per_second

    def start(self) -> None:
        shard = self.shard
        shard.thread = threading.Thread(target=self._run, name=f"kinesis-{shard.shard_id}", daemon=True)
        shard.thread.start()

    def running(self) -> bool:
        return not self.stopped() and self.shard.active

    def _run(self) -> None:
        shard = self.shard
        try:
            if shard.inherits:
                self._replay_ancestors()
            self._poll_until_done()
        except BaseException as exc:  # noqa: BLE001 - handed to the subscribing thread
            self.put(shard, exc)
        finally:  # a shard given up mid-outage is no longer this worker's problem
            self.health.recovered(f"kinesis {shard.shard_id}")

    def _iterator(self) -> str:
        shard = self.shard
        if shard.last_sequence is not None:
            start: dict[str, Any] = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": shard.last_sequence}
        else:
            start = shard.start
            if start["ShardIteratorType"] == "LATEST":
                # Renewing LATEST later would skip what arrived meanwhile.
                shard.start = {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": datetime.now(timezone.utc)}
        return self.client.get_shard_iterator(StreamName=self.settings.stream, ShardId=shard.shard_id, **start)["ShardIterator"]

    def _poll_until_done(self) -> None:
        shard = self.shard
        iterator: str | None = None
        last_poll = self.clock()
        next_call = 0.0
        failures = 0
        while self.running():
            wait = next_call - self.clock()
            if wait > 0:
                sleep_unless(lambda: not self.running(), wait)
                if not self.running():
                    return
            next_call = self.clock() + self.min_gap
            try:
                if iterator is None:
                    iterator = self._iterator()
                    next_call = self.clock() + self.min_gap
                response = self.client.get_records(ShardIterator=iterator, Limit=self.settings.get_records_limit)
            except botocore.exceptions.ClientError as exc:
                code = error_code(exc)
                if code == "ExpiredIteratorException":
                    iterator = None  # renewed on the next turn
                    next_call = self.clock()
                    continue
                if code not in RETRYABLE_READ_CODES:
                    raise
                failures += 1
                next_call = self._after_failed_poll(failures, code)
                continue
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
                # An outage: keep the shard's place and try again; the
                # pipeline simply sees no batches meanwhile.
                failures += 1
                log.warning("kinesis %s: %s; retrying", shard.shard_id, type(exc).__name__)
                next_call = self._after_failed_poll(failures, type(exc).__name__)
                continue
            if not self.running():
                return  # lost meanwhile: what this poll read is not ours
            if failures >= OUTAGE_AFTER_FAILED_POLLS:
                self.health.recovered(f"kinesis {shard.shard_id}")
                log.warning("kinesis %s: recovered after %d failed polls", shard.shard_id, failures)
            failures = 0
            shard.polls += 1
            now = self.clock()
            records = response.get("Records", [])
            behind = response.get("MillisBehindLatest")
            if behind is not None:
                shard.behind_ms = behind
                MILLIS_BEHIND.labels(shard=shard.shard_id).set(behind)
            if records:
                shard.caught_up_since = None
                self._emit_records(records)
                shard.last_sequence = records[-1]["SequenceNumber"]
            elif behind == 0:
                if shard.caught_up_since is None:
                    shard.caught_up_since = now
                self.put(shard, RecordBatch.idle(shard.partition, now - last_poll))
            else:
                shard.caught_up_since = None
            last_poll = now
            iterator = response.get("NextShardIterator")
            if iterator is None:  # a closed shard, read to its end
                shard.finished = True
                self.put(shard, RecordBatch.eof(shard.partition))
                return
            if not records:
                next_call = max(next_call, now + self.settings.poll_interval)

    def _after_failed_poll(self, failures: int, reason: str) -> float:
        """When to poll again; from the OUTAGE_AFTER_FAILED_POLLS-th failure in
        a row on, readiness and the watchdog hear of it (the health model)."""
        if failures >= OUTAGE_AFTER_FAILED_POLLS:
            self.health.failing(f"kinesis {self.shard.shard_id}", reason)
        return self.clock() + self._delay(failures)

    def _delay(self, failures: int) -> float:
        return max(self.min_gap, self.backoff.delay(failures))

    def _emit_records(self, records: list[dict[str, Any]]) -> None:
        shard = self.shard
        data: list[bytes] = []
        positions: list[int] = []
        marks = shard.marks
        for record in records:
            base = shard.next_position
            users = user_records(record)
            shard.next_position = base + len(users)
            marks.add(base, record["SequenceNumber"])
            for index, payload in enumerate(users):
                position = base + index
                if position >= shard.skip_below:
                    data.append(payload)
                    positions.append(position)
        if positions:
            shard.end_position = max(shard.end_position, positions[-1] + 1)
        arrival = self.wall_clock_us()
        size = self.settings.batch_size
        for i in range(0, len(data), size):
            self.put(shard, RecordBatch.data(shard.partition, data[i : i + size], positions[i : i + size], arrival))

    # -- a child shard: its ancestors' tails first -----------------------------

    def _replay_ancestors(self) -> None:
        """The ancestors' tails, as INHERITED batches of the child's partition."""
        shard = self.shard
        start_watermark = max((tail.watermark_us if tail else WATERMARK_MIN) for _, tail in shard.inherits)
        opening = dataclasses.replace(RecordBatch.inherited(shard.partition, (), ()), resume_watermark_us=start_watermark)
        self.put(shard, opening)
        for ancestor, tail in shard.inherits:
            if not self.running():
                return
            log.info("kinesis %s: replaying ancestor %s from %s to inherit its dedup keys", shard.shard_id, ancestor,
                     tail.sequence if tail else "its start")
            self._replay_tail(ancestor, tail)

    def _replay_tail(self, ancestor: str, tail: Tail | None) -> None:
        shard = self.shard
        if tail is not None:
            start: dict[str, Any] = {"ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": tail.sequence}
        else:
            start = {"ShardIteratorType": "TRIM_HORIZON"}
        skip = tail.sub_sequence if tail is not None else 0  # sub-records of the first record already before it
        last_sequence: str | None = None
        iterator: str | None = None
        failures = 0
        position = 0
        next_call = 0.0
        stopped = lambda: not self.running()  # noqa: E731
        while self.running():
            sleep_unless(stopped, next_call - self.clock())
            next_call = self.clock() + self.min_gap
            try:
                if iterator is None:
                    if last_sequence is not None:
                        start = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": last_sequence}
                    iterator = self.client.get_shard_iterator(StreamName=self.settings.stream, ShardId=ancestor,
                                                              **start)["ShardIterator"]
                response = self.client.get_records(ShardIterator=iterator, Limit=self.settings.get_records_limit)
            except botocore.exceptions.ClientError as exc:
                code = error_code(exc)
                if code == "ExpiredIteratorException":
                    iterator = None
                    continue
                if code == "ResourceNotFoundException":  # trimmed meanwhile: nothing left to inherit
                    log.warning("kinesis %s: ancestor %s is gone; not inherited", shard.shard_id, ancestor)
                    return
                if code not in RETRYABLE_READ_CODES:
                    raise
                failures += 1
                next_call = self.clock() + self._delay(failures)
                continue
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError):
                failures += 1
                next_call = self.clock() + self._delay(failures)
                continue
            failures = 0
            data: list[bytes] = []
            for record in response.get("Records", []):
                users = user_records(record)
                if skip:
                    users, skip = users[skip:], 0
                data.extend(users)
                last_sequence = record["SequenceNumber"]
            size = self.settings.batch_size
            for i in range(0, len(data), size):
                chunk = data[i : i + size]
                self.put(shard, RecordBatch.inherited(shard.partition, chunk, range(position, position + len(chunk))))
                position += len(chunk)
            iterator = response.get("NextShardIterator")
            if iterator is None:  # SHARD_END
                return
