"""`kinesis:STREAM` reader: every shard of a stream, each its own partition.

Usage::

    reader = KinesisReader("events", settings=settings, group="default")
    def on_batch(batch):
        ...                                      # make it durable downstream, then
        reader.commit(batch.partition, batch.positions[-1] + 1)
    reader.batches().subscribe(on_batch)         # blocks until reader.stop()

How it works:

- One poller thread per shard calls GetRecords (at most `polls_per_second`,
  default 5, per shard; `Limit` up to 10,000) and puts `RecordBatch`es into ONE
  bounded `queue.Queue`; the subscribing thread takes them off and emits them,
  so the Rx graph runs on one thread and a slow graph blocks the pollers
  instead of growing memory (Rx has no backpressure).
- The partition of shard S is `kinesis:STREAM/S`. The position of a user
  record is `int(SequenceNumber) * 1_000_000 + i`, where i is its index inside
  a KPL aggregated record (0 for a plain record): positions then stay distinct
  and increasing even for the user records of one aggregated record, which the
  raw-event writer's object names and the checkpoints need.
- Start: the group's checkpoint if there is one (`AT_SEQUENCE_NUMBER`, skipping
  what was already durable), else `start_after[shard]` (`AFTER_SEQUENCE_NUMBER`),
  else `[aws] iterator_type`: TRIM_HORIZON (default), LATEST or AT_TIMESTAMP.
- An expired iterator is renewed `AFTER_SEQUENCE_NUMBER` the last record read
  (or from the original start if none was read yet).
- IDLE: only a poll that returns no records while MillisBehindLatest is 0
  emits an IDLE batch, whose `idle_seconds` is the wall time since that
  shard's previous poll; so an idle shard's watermark advances with the wall
  clock and does not hold windows open, and a lagging shard never idles.
- KPL aggregated records are de-aggregated with `aws_kinesis_agg`.
- A closed shard read to its end (no NextShardIterator) emits EOF.
- `caught_up_seconds()`: the minimum over shards of how long each has been
  caught up, i.e. its polls find the tip and the pipeline has taken every
  batch read from it (for `consume --drain`: records still waiting in the
  queue are not processed yet).
- `commit(partition, position)` stores the shard's checkpoint in DynamoDB
  (see `producers/kinesis_checkpoints.py`).

Resharding (parents before children) is left to the lease-table issue: every
shard listed at subscribe time is read, from its own start.
"""

from __future__ import annotations

import base64
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import botocore.exceptions
import reactivex
from reactivex import abc
from reactivex.disposable import Disposable

import six  # noqa: F401  - aws_kinesis_agg imports it without declaring it
from aws_kinesis_agg import MAGIC
from aws_kinesis_agg.deaggregator import iter_deaggregate_records

from producers.aws_clients import (
    AwsConfig,
    aws_client,
    backoff_delay,
    checkpoint_table_name,
    ensure_profile_resources,
    ensure_stream,
    ensure_table,
    error_code,
    sleep_unless,
    startup_call,
)
from producers.kinesis_checkpoints import HASH_KEY, Checkpoint, KinesisCheckpoints
from streams.events import BatchKind, RecordBatch

SUB_SCALE = 1_000_000  # user records per Kinesis record never reach this (1 MiB / 4 B)
QUEUE_WAIT = 0.05
RETRYABLE_READ_CODES = frozenset({
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "LimitExceededException",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "KMSThrottlingException",
})

log = logging.getLogger(__name__)


def position_of(sequence_number: str, sub_index: int = 0) -> int:
    return int(sequence_number) * SUB_SCALE + sub_index


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


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


@dataclass
class _Shard:
    shard_id: str
    partition: str
    start: dict[str, Any]  # GetShardIterator arguments
    skip_below: int = 0  # positions below this were durable before the restart
    committed: int = 0
    last_sequence: str | None = None
    caught_up_since: float | None = None  # since when polls find the tip (poller's view)
    undelivered: int = 0  # DATA batches queued but not yet handed to the pipeline
    delivered_at: float = 0.0  # when the pipeline last finished a DATA batch of this shard
    finished: bool = False
    polls: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)


class KinesisReader:
    def __init__(
        self,
        stream: str,
        settings: Any = None,
        create_resources: bool = False,
        group: str = "default",
        batch_size: int = 5000,
        poll_interval: float = 0.2,
        client: Any = None,
        config: AwsConfig | None = None,
        checkpoints: KinesisCheckpoints | None = None,
        iterator_type: str | None = None,
        start_timestamp: datetime | None = None,
        start_after: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_us: Callable[[], int] = _wall_clock_us,
        **_ignored: Any,
    ) -> None:
        self.config = config or AwsConfig.from_settings(settings)
        self.stream = stream
        self.batch_size = max(1, batch_size)
        self.poll_interval = poll_interval
        self.iterator_type = iterator_type or self.config.iterator_type
        self.start_timestamp = start_timestamp
        if self.iterator_type == "AT_TIMESTAMP" and start_timestamp is None:
            self.start_timestamp = datetime.fromisoformat(self.config.start_timestamp)
            if self.start_timestamp.tzinfo is None:
                raise ValueError(f"[aws] start_timestamp needs a UTC offset: {self.config.start_timestamp!r}")
        self.start_after = dict(start_after or {})
        self.client = client or aws_client("kinesis", self.config, pool_size=64)
        if client is None or create_resources:
            ensure_stream(self.client, stream, create_resources, self.config.shard_count)
        if checkpoints is None:
            dynamodb = aws_client("dynamodb", self.config)
            table = checkpoint_table_name(self.config, group)
            ensure_table(dynamodb, table, create_resources, HASH_KEY)
            checkpoints = KinesisCheckpoints(dynamodb, table, stream)
        ensure_profile_resources(settings, self.config, create_resources, kinesis=True)
        self.checkpoints = checkpoints
        self._clock = clock
        self._wall_clock_us = wall_clock_us
        self._rng = random.Random()
        self._queue: queue.Queue = queue.Queue(maxsize=self.config.queue_batches)
        self._shards: dict[str, _Shard] = {}  # by partition
        self._count_lock = threading.Lock()
        self._stopped = False  # a plain flag: stop() may run in a signal handler
        self._started = False

    # -- observable -----------------------------------------------------------

    def partition_of(self, shard_id: str) -> str:
        return f"kinesis:{self.stream}/{shard_id}"

    def batches(self) -> reactivex.Observable:
        def subscribe(observer: abc.ObserverBase, scheduler: abc.SchedulerBase | None = None) -> Disposable:
            try:
                self._run(observer)
            except Exception as exc:  # noqa: BLE001 - surfaced through on_error
                self._stopped = True
                observer.on_error(exc)
            return Disposable()

        return reactivex.create(subscribe)

    def _run(self, observer: abc.ObserverBase) -> None:
        if self._started:
            raise RuntimeError("KinesisReader.batches() can be subscribed once")
        self._started = True
        for shard_id in self._list_shards():
            shard = self._shards[self.partition_of(shard_id)] = self._prepare(shard_id)
            shard.thread = threading.Thread(target=self._poll_guarded, args=(shard,), name=f"kinesis-{shard_id}", daemon=True)
        for shard in self._shards.values():
            assert shard.thread is not None
            shard.thread.start()
        try:
            while not self._stopped:
                try:
                    item = self._queue.get(timeout=QUEUE_WAIT)
                except queue.Empty:
                    if all(s.thread is not None and not s.thread.is_alive() for s in self._shards.values()):
                        break  # every shard ended
                    continue
                if isinstance(item, BaseException):
                    raise item
                observer.on_next(item)
                if item.kind is BatchKind.DATA:
                    shard = self._shards[item.partition]
                    with self._count_lock:
                        shard.undelivered -= 1
                    shard.delivered_at = self._clock()
        finally:
            self._stopped = True
            for shard in self._shards.values():
                if shard.thread is not None:
                    shard.thread.join(timeout=10)
        observer.on_completed()

    def _list_shards(self) -> list[str]:
        def call() -> list[str]:
            shards: list[str] = []
            params: dict[str, Any] = {"StreamName": self.stream}
            while True:
                page = self.client.list_shards(**params)
                shards.extend(s["ShardId"] for s in page["Shards"])
                token = page.get("NextToken")
                if not token:
                    return shards
                params = {"NextToken": token}

        return startup_call(f"kinesis stream {self.stream!r}", call)

    def _prepare(self, shard_id: str) -> _Shard:
        partition = self.partition_of(shard_id)
        checkpoint = self.checkpoints.load(shard_id)
        if checkpoint is not None:
            start = {"ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": checkpoint.sequence_number}
            resume = position_of(checkpoint.sequence_number, checkpoint.sub_sequence_number)
            return _Shard(shard_id, partition, start, skip_below=resume, committed=resume)
        if shard_id in self.start_after:
            start = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": self.start_after[shard_id]}
        elif self.iterator_type == "AT_TIMESTAMP":
            start = {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": self.start_timestamp}
        else:
            start = {"ShardIteratorType": self.iterator_type}
        return _Shard(shard_id, partition, start)

    # -- one poller per shard -----------------------------------------------

    def _poll_guarded(self, shard: _Shard) -> None:
        try:
            self._poll(shard)
        except BaseException as exc:  # noqa: BLE001 - handed to the subscribing thread
            self._put(exc)

    def _iterator(self, shard: _Shard) -> str:
        if shard.last_sequence is not None:
            start: dict[str, Any] = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": shard.last_sequence}
        else:
            start = shard.start
            if start["ShardIteratorType"] == "LATEST":
                # Renewing LATEST later would skip what arrived meanwhile.
                shard.start = {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": datetime.now(timezone.utc)}
        return self.client.get_shard_iterator(StreamName=self.stream, ShardId=shard.shard_id, **start)["ShardIterator"]

    def _poll(self, shard: _Shard) -> None:
        iterator: str | None = None
        min_gap = 1.0 / self.config.polls_per_second
        last_poll = self._clock()
        next_call = 0.0
        failures = 0
        while not self._stopped:
            wait = next_call - self._clock()
            if wait > 0:
                sleep_unless(lambda: self._stopped, wait)
                if self._stopped:
                    return
            next_call = self._clock() + min_gap
            try:
                if iterator is None:
                    iterator = self._iterator(shard)
                    next_call = self._clock() + min_gap
                response = self.client.get_records(ShardIterator=iterator, Limit=self.config.get_records_limit)
            except botocore.exceptions.ClientError as exc:
                code = error_code(exc)
                if code == "ExpiredIteratorException":
                    iterator = None  # renewed on the next turn
                    next_call = self._clock()
                    continue
                if code not in RETRYABLE_READ_CODES:
                    raise
                failures += 1
                next_call = self._clock() + self._backoff(failures)
                continue
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
                # An outage: keep the shard's place and try again; the
                # pipeline simply sees no batches meanwhile.
                failures += 1
                log.warning("kinesis %s: %s; retrying", shard.shard_id, type(exc).__name__)
                next_call = self._clock() + self._backoff(failures)
                continue
            failures = 0
            shard.polls += 1
            now = self._clock()
            records = response.get("Records", [])
            behind = response.get("MillisBehindLatest")
            if records:
                shard.caught_up_since = None
                self._emit_records(shard, records)
                shard.last_sequence = records[-1]["SequenceNumber"]
            elif behind == 0:
                if shard.caught_up_since is None:
                    shard.caught_up_since = now
                self._put(RecordBatch.idle(shard.partition, now - last_poll))
            else:
                shard.caught_up_since = None
            last_poll = now
            iterator = response.get("NextShardIterator")
            if iterator is None:  # a closed shard, read to its end
                shard.finished = True
                self._put(RecordBatch.eof(shard.partition))
                return
            if not records:
                next_call = max(next_call, now + self.poll_interval)

    def _backoff(self, failures: int) -> float:
        return max(1.0 / self.config.polls_per_second, backoff_delay(failures, 0.2, 10.0, self._rng.uniform))

    def _emit_records(self, shard: _Shard, records: list[dict[str, Any]]) -> None:
        data: list[bytes] = []
        positions: list[int] = []
        for record in records:
            base = position_of(record["SequenceNumber"])
            for index, payload in enumerate(user_records(record)):
                position = base + index
                if position >= shard.skip_below:
                    data.append(payload)
                    positions.append(position)
        arrival = self._wall_clock_us()
        for i in range(0, len(data), self.batch_size):
            with self._count_lock:
                shard.undelivered += 1
            self._put(RecordBatch.data(shard.partition, data[i : i + self.batch_size], positions[i : i + self.batch_size], arrival))

    def _put(self, item: Any) -> None:
        while not self._stopped:
            try:
                self._queue.put(item, timeout=QUEUE_WAIT)
                return
            except queue.Full:
                continue

    # -- control --------------------------------------------------------------

    def commit(self, partition: str, position: int, watermark_us: int | None = None) -> None:
        """Records of `partition` before `position` are durable downstream."""
        shard = self._shards.get(partition)
        if shard is None:
            raise ValueError(f"unknown partition {partition!r}: this reader reads kinesis stream {self.stream!r}")
        if position <= shard.committed:
            return
        sequence, sub = divmod(position, SUB_SCALE)
        self.checkpoints.save(shard.shard_id, Checkpoint(str(sequence), sub))
        shard.committed = position

    def stop(self) -> None:
        """End `batches()` soon; safe from any thread or a signal handler."""
        self._stopped = True

    def caught_up_seconds(self) -> float:
        """The minimum over shards of how long each has been caught up: its
        polls find the tip AND the pipeline has taken all it read (records
        waiting in the queue are not processed yet, so they do not count)."""
        open_shards = [s for s in self._shards.values() if not s.finished]
        if not self._shards:
            return 0.0
        if not open_shards:
            return float("inf")
        now = self._clock()
        return min(self._caught_up(s, now) for s in open_shards)

    @staticmethod
    def _caught_up(shard: _Shard, now: float) -> float:
        since = shard.caught_up_since
        if since is None or shard.undelivered > 0:
            return 0.0
        return max(0.0, now - max(since, shard.delivered_at))

    def close(self) -> None:
        self.stop()
