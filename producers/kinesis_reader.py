"""`kinesis:STREAM` reader: every shard of a stream, each its own partition.

Usage::

    reader = KinesisReader("events", settings.aws, group="default")
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
- The partition of shard S is `kinesis:STREAM/S`. Positions number the
  shard's user records (a KPL aggregated record holds several) one by one:
  distinct, increasing, and the same for a record whoever reads it, which the
  raw-event writer's object names and the checkpoints need. (Sequence numbers
  cannot serve: AWS's have 56 digits, the pipeline's positions are 64-bit.)
  The numbering starts at 0 on a shard read from TRIM_HORIZON (and on every
  child shard), continues from the position stored with the checkpoint
  (`checkpointPosition` in the lease) when a worker resumes, and starts at the
  wall clock in µs × 1000 (above any earlier run's) for LATEST, AT_TIMESTAMP
  and `start_after`. For commits the reader keeps, per record delivered and
  not yet committed past, its first position and its sequence number (32
  bytes), and checkpoints position P as (sequence number, P − first position).
- Which shards: those whose lease this worker holds (`producers/kinesis_leases.py`,
  a `LeaseCoordinator` thread renews, takes, balances and loses leases; a lone
  worker takes them all). A poller starts when a lease is taken and stops at
  once when it is lost; batches of a lost lease still in the queue are dropped
  and never committed. Children of a split or merge are read only after every
  parent's lease is finished (read to SHARD_END, final checkpoint written).
- A child continues its parents' dedup keys and watermark (docs/aws.md,
  "Resharding"): before its own records, its poller replays every ancestor
  shard still listed (parents first) from the tail checkpoint kept in its
  finished lease (the last one with a known watermark; else from its start)
  to SHARD_END, as INHERITED batches under the child's partition, which the
  counter decides but never counts. The first, empty, one starts the child's
  state at the highest ancestor tail watermark. This runs on every take of
  the child's lease, so it holds across workers and restarts.
- Start: the lease's checkpoint if there is one (`AT_SEQUENCE_NUMBER`, skipping
  what was already durable; the stored watermark comes back as
  `resume_watermark_us` on the first batch), else `start_after[shard]`
  (`AFTER_SEQUENCE_NUMBER`), else TRIM_HORIZON for a child shard, else
  `[aws] iterator_type`: TRIM_HORIZON (default), LATEST or AT_TIMESTAMP.
- An expired iterator is renewed `AFTER_SEQUENCE_NUMBER` the last record read
  (or from the original start if none was read yet).
- IDLE: only a poll that returns no records while MillisBehindLatest is 0
  emits an IDLE batch, whose `idle_seconds` is the wall time since that
  shard's previous poll; so an idle shard's watermark advances with the wall
  clock and does not hold windows open, and a lagging shard never idles.
- KPL aggregated records are de-aggregated with `aws_kinesis_agg`.
- A closed shard read to its end (no NextShardIterator) emits EOF.
- `caught_up_seconds()`: the minimum over shards of how long each one's polls
  have found the tip, once the pipeline has processed every batch read from
  it (for `consume --drain`: records still waiting in the queue are not
  processed yet; the quiet time itself runs while the pipeline works).
- `commit(partition, position, watermark_us)` writes the shard's checkpoint
  into its lease item, conditional on our leaseCounter (a refused write means
  the lease is lost: the poller stops).
- `close()` (also at interpreter exit) hands the leases back after the final
  checkpoint: SIGTERM and `--drain` end with a graceful handoff.
"""

from __future__ import annotations

import atexit
import base64
import bisect
import collections
import dataclasses
import logging
import os
import queue
import random
import socket
import threading
import time
import weakref
from array import array
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

from aws.clients import aws_client
from aws.errors import error_code, startup_call
from aws.resources import ensure_stream
from aws.settings import AwsConfig
from observability.health import HEALTH, PipelineHealth
from observability.metrics import MILLIS_BEHIND
from producers import kinesis_metrics as metrics
from producers.kinesis_leases import Lease, LeaseCoordinator, LeaseTable, ShardInfo, Tail, ensure_lease_table
from producers.transport import wall_clock_us
from resilience.backoff import Backoff, sleep_unless
from streams.batches import BatchKind, RecordBatch
from streams.windowing import WATERMARK_MAX, WATERMARK_MIN

SUB_SCALE = 1_000_000  # user records per Kinesis record never reach this (1 MiB / 4 B)
POSITION_MAX = (1 << 63) - 1
_WORD = (1 << 64) - 1
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
    """The position the releases before checkpointPosition gave a record (they
    stored no position with the checkpoint; used to resume those leases)."""
    return int(sequence_number) * SUB_SCALE + sub_index


def fresh_base(wall_clock_us: int) -> int:
    """Where the numbering of a shard read from LATEST or AT_TIMESTAMP, with no
    checkpoint, starts: above every position an earlier run of it can have
    given (those advance by one per record, this by 1000 per µs)."""
    return wall_clock_us * 1000


class _Marks:
    """Per Kinesis record delivered and not yet committed past: the position
    of its first user record and its sequence number (as three 64-bit words),
    to turn a committed position back into (sequence number, sub-record)."""

    __slots__ = ("positions", "hi", "mid", "lo", "start", "lock")

    def __init__(self) -> None:
        self.positions = array("q")
        self.hi, self.mid, self.lo = array("Q"), array("Q"), array("Q")
        self.start = 0  # entries before this are dropped (compacted now and then)
        self.lock = threading.Lock()

    def add(self, position: int, sequence_number: str) -> None:
        value = int(sequence_number)
        with self.lock:
            self.positions.append(position)
            self.hi.append(value >> 128)
            self.mid.append((value >> 64) & _WORD)
            self.lo.append(value & _WORD)

    def locate(self, position: int) -> tuple[str, int] | None:
        """(sequence number, index of the sub-record) of the user record at
        `position` (or just after the last one delivered); forgets what lies
        before it."""
        with self.lock:
            i = bisect.bisect_right(self.positions, position, lo=self.start) - 1
            if i < self.start:
                return None
            value = (self.hi[i] << 128) | (self.mid[i] << 64) | self.lo[i]
            found = str(value), position - self.positions[i]
            self.start = i
            if i > 4096 and i * 2 > len(self.positions):
                for column in (self.positions, self.hi, self.mid, self.lo):
                    del column[:i]
                self.start = 0
            return found

    def __len__(self) -> int:
        return len(self.positions) - self.start


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
class _Shard:
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
    marks: _Marks = field(default_factory=_Marks, repr=False)


# A throttled poll is ordinary on a shared shard; this many in a row is an
# outage, reported to the health model (readiness, the systemd watchdog).
OUTAGE_AFTER_FAILED_POLLS = 3

class KinesisReader:
    def __init__(
        self,
        stream: str,
        config: AwsConfig,
        create_resources: bool = False,
        group: str = "default",
        batch_size: int = 5000,
        poll_interval: float = 0.2,
        client: Any = None,
        leases: LeaseTable | None = None,
        iterator_type: str | None = None,
        start_timestamp: datetime | None = None,
        start_after: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_us: Callable[[], int] = wall_clock_us,
        worker_id: str | None = None,
        health: PipelineHealth = HEALTH,
        **_ignored: Any,
    ) -> None:
        self.config = config
        self.health = health
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
        if leases is None:
            leases = LeaseTable(*ensure_lease_table(self.config, group, create_resources), stream)
        self.leases = leases  # the lease items also hold the checkpoints
        self.worker_id = worker_id or self.config.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._clock = clock
        self._wall_clock_us = wall_clock_us
        self._rng = random.Random()
        self._queue: queue.Queue = queue.Queue(maxsize=self.config.queue_batches)
        self._shards: dict[str, _Shard] = {}  # by partition: the shards whose lease we hold
        self._shards_lock = threading.RLock()
        self._count_lock = threading.Lock()
        self._stopped = False  # a plain flag: stop() may run in a signal handler
        self._started = False
        self._closed = False
        self._ended_at: float | None = None  # when batches() completed
        self._child_shards: set[str] = set()
        self._parents: dict[str, tuple[str, ...]] = {}  # of every listed shard
        self.coordinator = LeaseCoordinator(
            self.leases,
            self.worker_id,
            list_shards=self._list_shard_infos,
            on_acquired=self._on_acquired,
            on_lost=self._on_lost,
            failover_seconds=self.config.failover_seconds,
            renew_seconds=self.config.lease_renew_seconds,
            discovery_seconds=self.config.shard_discovery_seconds,
            clock=clock,
        )
        self._coordinator_thread: threading.Thread | None = None
        self._last_status = 0.0
        self._last_heartbeat = 0.0
        _release_at_exit(self)

    # -- observable -----------------------------------------------------------

    def partition_of(self, shard_id: str) -> str:
        return f"kinesis:{self.stream}/{shard_id}"

    def batches(self) -> reactivex.Observable:
        def subscribe(observer: abc.ObserverBase, scheduler: abc.SchedulerBase | None = None) -> Disposable:
            try:
                self._run(observer)
            except Exception as exc:  # noqa: BLE001 - surfaced through on_error
                self._stopped = True
                self._ended_at = self._clock()
                observer.on_error(exc)
            return Disposable()

        return reactivex.create(subscribe)

    def _run(self, observer: abc.ObserverBase) -> None:
        if self._started:
            raise RuntimeError("KinesisReader.batches() can be subscribed once")
        self._started = True
        startup_call(f"kinesis stream {self.stream!r}", self.coordinator.discover)
        self.coordinator.round()  # a lone worker takes every lease here
        self._coordinator_thread = threading.Thread(target=self._coordinate, name=f"kinesis-leases-{self.stream}", daemon=True)
        self._coordinator_thread.start()
        try:
            while not self._stopped:
                try:
                    shard, item = self._queue.get(timeout=QUEUE_WAIT)
                except queue.Empty:
                    if self.coordinator.all_finished and not self._shards:
                        break  # every shard of the stream ended
                    self._heartbeat(observer)
                    continue
                if isinstance(item, BaseException):
                    if shard is None or shard.active:
                        raise item
                    continue
                if self._shards.get(item.partition) is not shard or not shard.active:
                    # A lost (or handed back) lease: its queued batches are not ours to process.
                    if item.kind is BatchKind.DATA:
                        with self._count_lock:
                            shard.undelivered -= 1
                    continue
                observer.on_next(item)
                if item.kind is BatchKind.DATA:
                    with self._count_lock:
                        shard.undelivered -= 1
                    shard.delivered_at = self._clock()
                    shard.pending.append((item.positions[-1], shard.delivered_at))
                elif item.kind is BatchKind.EOF:
                    shard.eof_taken = True
                    self._maybe_finish(shard)
        finally:
            self._stopped = True
            self._ended_at = self._clock()
            self.coordinator.acquiring = False
            for shard in list(self._shards.values()):
                if shard.thread is not None:
                    shard.thread.join(timeout=10)
        observer.on_completed()

    def _heartbeat(self, observer: abc.ObserverBase) -> None:
        """A shard at SHARD_END waits for the commit that covers its last
        records, and the pipeline commits only when a batch passes: while one
        waits and nothing else arrives, pass an empty IDLE batch now and then."""
        now = self._clock()
        if now - self._last_heartbeat < 0.5:
            return
        for shard in list(self._shards.values()):
            if shard.eof_taken and not shard.retired and shard.active:
                self._last_heartbeat = now
                observer.on_next(RecordBatch.idle(shard.partition, 0.0))
                return

    # -- leases ----------------------------------------------------------------

    def _list_shard_infos(self) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        params: dict[str, Any] = {"StreamName": self.stream}
        while True:
            page = self.client.list_shards(**params)
            for s in page["Shards"]:
                parents = tuple(p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p)
                shards.append(ShardInfo(s["ShardId"], parents))
            token = page.get("NextToken")
            if not token:
                break
            params = {"NextToken": token}
        self._child_shards = {s.shard_id for s in shards if s.parents}
        self._parents = {s.shard_id: s.parents for s in shards}
        return shards

    def _coordinate(self) -> None:
        linger = max(self.config.failover_seconds, 1.0)
        while not self._closed:
            sleep_unless(lambda: self._closed, self.coordinator.round_every)
            if self._closed:
                return
            if self._ended_at is not None and self._clock() - self._ended_at > linger:
                # Stopped and nobody called close(): hand the leases back anyway.
                self.close()
                return
            try:
                self.coordinator.round()
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                log.warning("worker %s: lease round failed: %s", self.worker_id, type(exc).__name__)
            except Exception:  # noqa: BLE001 - keep renewing whatever happens
                log.exception("worker %s: lease round failed", self.worker_id)
            self._status()

    def _on_acquired(self, lease: Lease, how: str) -> None:
        if self._stopped:
            return
        shard = self._prepare(lease)
        shard.thread = threading.Thread(target=self._poll_guarded, args=(shard,), name=f"kinesis-{lease.shard_id}", daemon=True)
        with self._shards_lock:
            old = self._shards.get(shard.partition)
            if old is not None:
                old.active = False
            self._shards[shard.partition] = shard
        shard.thread.start()

    def _on_lost(self, shard_id: str, reason: str) -> None:
        with self._shards_lock:
            shard = self._shards.pop(self.partition_of(shard_id), None)
        if shard is not None:
            shard.active = False  # the poller stops at its next step
            metrics.CHECKPOINT_LAG.labels(shard=shard_id).set(0)

    def _prepare(self, lease: Lease) -> _Shard:
        shard_id = lease.shard_id
        partition = self.partition_of(shard_id)
        if lease.checkpoint is not None:
            start = {"ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": lease.checkpoint}
            resume = lease.position
            if resume is None:  # checkpointed by a release that stored no position
                resume = position_of(lease.checkpoint, lease.sub_sequence)
                if resume > POSITION_MAX // 2:
                    resume = fresh_base(self._wall_clock_us())
            # The checkpoint's record comes first; its sub-records before the
            # checkpointed one were durable already.
            shard = _Shard(shard_id, partition, start, skip_below=resume, committed=resume, end_position=resume,
                           next_position=resume - lease.sub_sequence)
        else:
            base = 0
            if shard_id in self.start_after:
                start = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": self.start_after[shard_id]}
                base = fresh_base(self._wall_clock_us())
            elif lease.parents or shard_id in self._child_shards:
                start = {"ShardIteratorType": "TRIM_HORIZON"}  # a child: from its first record, no gap
            elif self.iterator_type == "AT_TIMESTAMP":
                start = {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": self.start_timestamp}
                base = fresh_base(self._wall_clock_us())
            else:
                start = {"ShardIteratorType": self.iterator_type}
                if self.iterator_type != "TRIM_HORIZON":
                    base = fresh_base(self._wall_clock_us())
            shard = _Shard(shard_id, partition, start, skip_below=base, committed=base, end_position=base,
                           next_position=base)
        # Every ownership starts its partition afresh in the pipeline, with the
        # watermark stored with the checkpoint (the minimum when none is).
        shard.resume_watermark_us = lease.watermark_us if lease.watermark_us is not None else WATERMARK_MIN
        if lease.checkpoint is not None and lease.watermark_us is not None and lease.watermark_us < WATERMARK_MAX:
            shard.tail = Tail(lease.checkpoint, lease.sub_sequence, lease.watermark_us)
        shard.inherits = self._ancestors(shard_id)
        return shard

    def _ancestors(self, shard_id: str) -> list[tuple[str, Tail | None]]:
        """The shards a child continues, each before its own children, with
        the tail their finished leases kept. A parent ListShards no longer
        returns is past retention: nothing of it can be read, nor matter."""
        out: list[tuple[str, Tail | None]] = []
        seen: set[str] = set()

        def visit(child: str) -> None:
            for parent in sorted(self._parents.get(child, ())):
                if parent in seen or parent not in self._parents:
                    continue
                seen.add(parent)
                visit(parent)
                lease = self.leases.get(parent)
                out.append((parent, lease.tail if lease is not None else None))

        visit(shard_id)
        return out

    def _maybe_finish(self, shard: _Shard) -> None:
        """A shard read to SHARD_END whose every record is durable: retire its lease."""
        if shard.retired or not shard.eof_taken or shard.committed < shard.end_position:
            return
        shard.retired = True
        self.coordinator.finish(shard.shard_id, shard.tail)
        with self._shards_lock:
            if self._shards.get(shard.partition) is shard:
                del self._shards[shard.partition]

    def _status(self) -> None:
        now = self._clock()
        for shard in list(self._shards.values()):
            lag = now - shard.pending[0][1] if shard.pending else 0.0
            metrics.CHECKPOINT_LAG.labels(shard=shard.shard_id).set(lag)
        if now - self._last_status < 10.0:
            return
        self._last_status = now
        shards = sorted(self._shards.values(), key=lambda s: s.shard_id)
        log.info(
            "worker %s: %d leases held of stream %s (%d workers seen): %s",
            self.worker_id, len(shards), self.stream, self.coordinator.workers_seen,
            ", ".join(
                f"{s.shard_id} behind={s.behind_ms if s.behind_ms is not None else '?'}ms "
                f"checkpoint_lag={now - s.pending[0][1] if s.pending else 0.0:.1f}s"
                for s in shards
            ) or "none",
        )

    # -- one poller per shard -----------------------------------------------

    def _poll_guarded(self, shard: _Shard) -> None:
        try:
            self._poll(shard)
        except BaseException as exc:  # noqa: BLE001 - handed to the subscribing thread
            self._put(shard, exc)

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
        try:
            self._poll_until_done(shard)
        finally:  # a shard given up mid-outage is no longer this worker's problem
            self.health.recovered(f"kinesis {shard.shard_id}")

    def _poll_until_done(self, shard: _Shard) -> None:
        if shard.inherits:
            self._replay_ancestors(shard)
        iterator: str | None = None
        min_gap = 1.0 / self.config.polls_per_second
        last_poll = self._clock()
        next_call = 0.0
        failures = 0
        running = lambda: not self._stopped and shard.active  # noqa: E731
        while running():
            wait = next_call - self._clock()
            if wait > 0:
                sleep_unless(lambda: not running(), wait)
                if not running():
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
                next_call = self._after_failed_poll(shard, failures, code)
                continue
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
                # An outage: keep the shard's place and try again; the
                # pipeline simply sees no batches meanwhile.
                failures += 1
                log.warning("kinesis %s: %s; retrying", shard.shard_id, type(exc).__name__)
                next_call = self._after_failed_poll(shard, failures, type(exc).__name__)
                continue
            if not running():
                return  # lost meanwhile: what this poll read is not ours
            if failures >= OUTAGE_AFTER_FAILED_POLLS:
                self.health.recovered(f"kinesis {shard.shard_id}")
                log.warning("kinesis %s: recovered after %d failed polls", shard.shard_id, failures)
            failures = 0
            shard.polls += 1
            now = self._clock()
            records = response.get("Records", [])
            behind = response.get("MillisBehindLatest")
            if behind is not None:
                shard.behind_ms = behind
                MILLIS_BEHIND.labels(shard=shard.shard_id).set(behind)
            if records:
                shard.caught_up_since = None
                self._emit_records(shard, records)
                shard.last_sequence = records[-1]["SequenceNumber"]
            elif behind == 0:
                if shard.caught_up_since is None:
                    shard.caught_up_since = now
                self._put(shard, RecordBatch.idle(shard.partition, now - last_poll))
            else:
                shard.caught_up_since = None
            last_poll = now
            iterator = response.get("NextShardIterator")
            if iterator is None:  # a closed shard, read to its end
                shard.finished = True
                self._put(shard, RecordBatch.eof(shard.partition))
                return
            if not records:
                next_call = max(next_call, now + self.poll_interval)

    def _replay_ancestors(self, shard: _Shard) -> None:
        """The ancestors' tails, as INHERITED batches of the child's partition."""
        start_watermark = max((tail.watermark_us if tail else WATERMARK_MIN) for _, tail in shard.inherits)
        opening = dataclasses.replace(RecordBatch.inherited(shard.partition, (), ()), resume_watermark_us=start_watermark)
        self._put(shard, opening)
        for ancestor, tail in shard.inherits:
            if self._stopped or not shard.active:
                return
            log.info("kinesis %s: replaying ancestor %s from %s to inherit its dedup keys", shard.shard_id, ancestor,
                     tail.sequence if tail else "its start")
            self._replay_tail(shard, ancestor, tail)

    def _replay_tail(self, shard: _Shard, ancestor: str, tail: Tail | None) -> None:
        if tail is not None:
            start: dict[str, Any] = {"ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": tail.sequence}
        else:
            start = {"ShardIteratorType": "TRIM_HORIZON"}
        skip = tail.sub_sequence if tail is not None else 0  # sub-records of the first record already before it
        min_gap = 1.0 / self.config.polls_per_second
        last_sequence: str | None = None
        iterator: str | None = None
        failures = 0
        position = 0
        next_call = 0.0
        stopped = lambda: self._stopped or not shard.active  # noqa: E731
        while not stopped():
            sleep_unless(stopped, next_call - self._clock())
            next_call = self._clock() + min_gap
            try:
                if iterator is None:
                    if last_sequence is not None:
                        start = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": last_sequence}
                    iterator = self.client.get_shard_iterator(StreamName=self.stream, ShardId=ancestor, **start)["ShardIterator"]
                response = self.client.get_records(ShardIterator=iterator, Limit=self.config.get_records_limit)
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
                next_call = self._clock() + self._backoff(failures)
                continue
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError):
                failures += 1
                next_call = self._clock() + self._backoff(failures)
                continue
            failures = 0
            data: list[bytes] = []
            for record in response.get("Records", []):
                users = user_records(record)
                if skip:
                    users, skip = users[skip:], 0
                data.extend(users)
                last_sequence = record["SequenceNumber"]
            for i in range(0, len(data), self.batch_size):
                chunk = data[i : i + self.batch_size]
                self._put(shard, RecordBatch.inherited(shard.partition, chunk, range(position, position + len(chunk))))
                position += len(chunk)
            iterator = response.get("NextShardIterator")
            if iterator is None:  # SHARD_END
                return

    def _after_failed_poll(self, shard: _Shard, failures: int, reason: str) -> float:
        """When to poll again; from the OUTAGE_AFTER_FAILED_POLLS-th failure in
        a row on, readiness and the watchdog hear of it (the health model)."""
        if failures >= OUTAGE_AFTER_FAILED_POLLS:
            self.health.failing(f"kinesis {shard.shard_id}", reason)
        return self._clock() + self._backoff(failures)

    def _backoff(self, failures: int) -> float:
        return max(1.0 / self.config.polls_per_second, Backoff(0.2, 10.0, rng=self._rng).delay(failures))

    def _emit_records(self, shard: _Shard, records: list[dict[str, Any]]) -> None:
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
        arrival = self._wall_clock_us()
        for i in range(0, len(data), self.batch_size):
            with self._count_lock:
                shard.undelivered += 1
            self._put(shard, RecordBatch.data(shard.partition, data[i : i + self.batch_size], positions[i : i + self.batch_size], arrival))

    def _put(self, shard: _Shard | None, item: Any) -> None:
        if (isinstance(item, RecordBatch) and item.kind is not BatchKind.INHERITED and shard is not None
                and shard.resume_pending):
            shard.resume_pending = False
            item = dataclasses.replace(item, resume_watermark_us=shard.resume_watermark_us)
        while not self._stopped and (shard is None or shard.active):
            try:
                self._queue.put((shard, item), timeout=QUEUE_WAIT)
                return
            except queue.Full:
                continue

    # -- control --------------------------------------------------------------

    def commit(self, partition: str, position: int, watermark_us: int | None = None) -> None:
        """Records of `partition` before `position` are durable downstream;
        a replay from `position` starts with `watermark_us`. A commit of a
        shard whose lease this worker no longer holds is ignored."""
        if not partition.startswith(f"kinesis:{self.stream}/"):
            raise ValueError(f"unknown partition {partition!r}: this reader reads kinesis stream {self.stream!r}")
        shard = self._shards.get(partition)
        if shard is None or not shard.active:
            log.debug("worker %s: commit of %s ignored: lease not held", self.worker_id, partition)
            return
        if position > shard.committed:
            located = shard.marks.locate(position)
            if located is None:  # not a position this ownership delivered: not checkpointing is always safe
                log.warning("worker %s: commit of %s at %d ignored: no record read there", self.worker_id, partition, position)
                return
            sequence, sub = located
            if not self.coordinator.checkpoint(shard.shard_id, sequence, sub, watermark_us, position):
                return  # lost: the coordinator stopped the poller
            if watermark_us is not None and watermark_us < WATERMARK_MAX:
                shard.tail = Tail(sequence, sub, watermark_us)
            shard.committed = position
            while shard.pending and shard.pending[0][0] < position:
                shard.pending.popleft()
        self._maybe_finish(shard)

    def stop(self) -> None:
        """End `batches()` soon; safe from any thread or a signal handler.
        The leases are handed back by `close()` (after the final commit)."""
        self._stopped = True

    def caught_up_seconds(self) -> float:
        """How long this worker has been caught up: the minimum over the shards
        it holds of how long each one's polls have found the tip (the shard has
        been quiet that long), 0 for a shard whose records the pipeline has not
        all processed yet, and no longer than no lease has been waiting for an
        owner (unowned, or its owner stopped renewing).

        The quiet time runs while the pipeline works through what was read
        before: `--drain S` on a backlog exits as soon as the pipeline is done
        with it (if the shards have been quiet for S seconds by then), not S
        seconds after."""
        since = self.coordinator.nothing_waiting_since
        if since is None:
            return 0.0
        now = self._clock()
        base = max(0.0, now - since)
        open_shards = [s for s in list(self._shards.values()) if not s.finished or not s.retired]
        if not open_shards:
            return base
        return min(base, min(self._caught_up(s, now) for s in open_shards))

    @staticmethod
    def _caught_up(shard: _Shard, now: float) -> float:
        if shard.finished:  # read to SHARD_END: waiting for its final checkpoint
            return float("inf") if shard.retired else 0.0
        since = shard.caught_up_since
        if since is None or shard.undelivered > 0:
            return 0.0
        return max(0.0, now - since)

    def close(self) -> None:
        """Stop, and hand every lease back (graceful handoff). Call it after
        the final commit; it also runs at interpreter exit."""
        self.stop()
        if self._closed:
            return
        self._closed = True
        self.coordinator.acquiring = False
        with self._shards_lock:
            for shard in self._shards.values():
                shard.active = False
            self._shards.clear()
        try:
            self.coordinator.release_all()
        except Exception:  # noqa: BLE001 - at exit: the leases expire instead
            log.exception("worker %s: releasing leases failed", self.worker_id)


_OPEN_READERS: "weakref.WeakSet[KinesisReader]" = weakref.WeakSet()


def _release_at_exit(reader: KinesisReader) -> None:
    _OPEN_READERS.add(reader)


@atexit.register
def _close_open_readers() -> None:
    for reader in list(_OPEN_READERS):
        if reader._started and not reader._closed:
            reader.close()
