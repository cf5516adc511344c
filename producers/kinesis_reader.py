"""`kinesis:STREAM` reader: every shard of a stream, each its own partition,
multiplexed into one stream of batches.

Usage::

    reader = open_kinesis_reader("events", aws, group="default")   # checks the stream and lease table
    def on_batch(batch):
        ...                                      # make it durable downstream, then
        reader.commit(batch.partition, batch.positions[-1] + 1)
    try:
        reader.batches().subscribe(on_batch)     # blocks until reader.stop()
    finally:
        reader.close()                           # after the final commit: hands the leases back

Three parts, one job each:

- `producers/kinesis_shard_poller.py`: one poller thread per shard calls
  GetRecords and hands `RecordBatch`es over (IDLE only at the tip, EOF at
  SHARD_END, a child's ancestors replayed first as INHERITED batches).
- `producers/kinesis_shard_set.py`: the lease glue. Which shards: those
  whose lease this worker holds (a `LeaseCoordinator` renews, takes,
  balances and loses leases; a lone worker takes them all). A poller starts
  when a lease is taken and stops at once when it is lost; where it starts
  comes from the lease's checkpoint. Children of a split or merge are read
  only after every parent's lease is finished (read to SHARD_END, final
  checkpoint written).
- this module, the multiplexer: the pollers put into ONE bounded
  `queue.Queue`; the subscribing thread takes batches off it and emits them,
  so the Rx graph runs on one thread and a slow graph blocks the pollers
  instead of growing memory (Rx has no backpressure). Batches of a lost lease
  still in the queue are dropped and never committed.

- The partition of shard S is `kinesis:STREAM/S`; positions number its user
  records (`producers/kinesis_positions.py`). For commits the reader keeps,
  per record delivered and not yet committed past, its first position and its
  sequence number, and checkpoints position P as (sequence number,
  P − first position).
- `caught_up_seconds()`: the minimum over shards of how long each one's polls
  have found the tip, once the pipeline has processed every batch read from
  it (for `consume --drain`: records still waiting in the queue are not
  processed yet; the quiet time itself runs while the pipeline works).
- `commit(partition, position, watermark_us)` writes the shard's checkpoint
  into its lease item, conditional on our leaseCounter (a refused write means
  the lease is lost: the poller stops).
- `close()` hands the leases back after the final checkpoint: SIGTERM and
  `--drain` end with a graceful handoff. A reader stopped and never closed
  hands them back `failover_seconds` after it stopped; one killed lets them
  expire.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import threading
import time
from typing import Any, Callable

import botocore.exceptions
import reactivex
from reactivex import abc
from reactivex.disposable import Disposable

from aws.clients import aws_client
from aws.errors import startup_call
from aws.resources import ensure_stream
from aws.settings import AwsConfig
from observability.health import HEALTH, PipelineHealth
from producers.kinesis_lease_table import LeaseTable, Tail, ensure_lease_table
from producers.kinesis_settings import KinesisReaderSettings
from producers.kinesis_shard_poller import ShardPoller, ShardState
from producers.kinesis_shard_set import ShardSet
from producers.transport import wall_clock_us
from resilience.backoff import sleep_unless
from streams.batches import BatchKind, RecordBatch
from streams.windowing import WATERMARK_MAX

QUEUE_WAIT = 0.05

log = logging.getLogger(__name__)


def open_kinesis_reader(stream: str, aws: AwsConfig, group: str = "default", batch_size: int = 5000,
                        poll_interval: float = 0.2, create_resources: bool = False) -> KinesisReader:
    """The reader of `stream` for consumer group `group`, after checking (or,
    with `create_resources`, creating) the stream and the group's lease table."""
    client = aws_client("kinesis", aws, pool_size=64)
    ensure_stream(client, stream, create_resources, aws.shard_count)
    dynamodb, table = ensure_lease_table(aws, group, create_resources)
    settings = KinesisReaderSettings.from_aws(stream, aws, batch_size=batch_size, poll_interval=poll_interval)
    return KinesisReader(settings, client, LeaseTable(dynamodb, table, stream))


class KinesisReader:
    """Makes no AWS call until `batches()` is subscribed."""

    def __init__(
        self,
        settings: KinesisReaderSettings,
        client: Any,
        leases: LeaseTable,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_us: Callable[[], int] = wall_clock_us,
        health: PipelineHealth = HEALTH,
    ) -> None:
        self.settings = settings
        self.stream = settings.stream
        self.client = client
        self.leases = leases  # the lease items also hold the checkpoints
        self.health = health
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._clock = clock
        self._wall_clock_us = wall_clock_us
        self._queue: queue.Queue = queue.Queue(maxsize=settings.queue_batches)
        self._count_lock = threading.Lock()
        self._stopped = False  # a plain flag: stop() may run in a signal handler
        self._started = False
        self._closed = False
        self._ended_at: float | None = None  # when batches() completed
        self.shards = ShardSet(settings, client, leases, self.worker_id, start_poller=self._start_poller,
                               stopped=lambda: self._stopped, clock=clock, wall_clock_us=wall_clock_us)
        self.coordinator = self.shards.coordinator
        self._coordinator_thread: threading.Thread | None = None
        self._last_heartbeat = 0.0

    def partition_of(self, shard_id: str) -> str:
        return self.shards.partition_of(shard_id)

    # -- observable -----------------------------------------------------------

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
                    if self.coordinator.all_finished and not self.shards.by_partition:
                        break  # every shard of the stream ended
                    self._heartbeat(observer)
                    continue
                if isinstance(item, BaseException):
                    if shard is None or shard.active:
                        raise item
                    continue
                if self.shards.get(item.partition) is not shard or not shard.active:
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
                    self.shards.maybe_finish(shard)
        finally:
            self._stopped = True
            self._ended_at = self._clock()
            self.coordinator.acquiring = False
            for shard in self.shards.shards():
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
        for shard in self.shards.shards():
            if shard.eof_taken and not shard.retired and shard.active:
                self._last_heartbeat = now
                observer.on_next(RecordBatch.idle(shard.partition, 0.0))
                return

    def _start_poller(self, shard: ShardState) -> None:
        ShardPoller(shard, self.client, self.settings, self._put, stopped=lambda: self._stopped, clock=self._clock,
                    wall_clock_us=self._wall_clock_us, health=self.health).start()

    def _put(self, shard: ShardState, item: RecordBatch | BaseException) -> None:
        if isinstance(item, RecordBatch):
            if item.kind is not BatchKind.INHERITED and shard.resume_pending:
                shard.resume_pending = False
                item = dataclasses.replace(item, resume_watermark_us=shard.resume_watermark_us)
            if item.kind is BatchKind.DATA:
                with self._count_lock:
                    shard.undelivered += 1
        while not self._stopped and shard.active:
            try:
                self._queue.put((shard, item), timeout=QUEUE_WAIT)
                return
            except queue.Full:
                continue

    def _coordinate(self) -> None:
        linger = max(self.settings.failover_seconds, 1.0)
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
            self.shards.log_status()

    # -- control --------------------------------------------------------------

    def commit(self, partition: str, position: int, watermark_us: int | None = None) -> None:
        """Records of `partition` before `position` are durable downstream;
        a replay from `position` starts with `watermark_us`. A commit of a
        shard whose lease this worker no longer holds is ignored."""
        if not partition.startswith(f"kinesis:{self.stream}/"):
            raise ValueError(f"unknown partition {partition!r}: this reader reads kinesis stream {self.stream!r}")
        shard = self.shards.get(partition)
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
        self.shards.maybe_finish(shard)

    def stop(self) -> None:
        """End `batches()` soon; safe from any thread or a signal handler.
        The leases are handed back by `close()` (after the final commit)."""
        self._stopped = True

    def queue_depth(self) -> int:
        """Batches the pollers fetched that the pipeline has not taken yet
        (the port's optional `queue_depth`: the QUEUE_DEPTH gauge)."""
        return self._queue.qsize()

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
        open_shards = [s for s in self.shards.shards() if not s.finished or not s.retired]
        if not open_shards:
            return base
        return min(base, min(self._caught_up(s, now) for s in open_shards))

    @staticmethod
    def _caught_up(shard: ShardState, now: float) -> float:
        if shard.finished:  # read to SHARD_END: waiting for its final checkpoint
            return float("inf") if shard.retired else 0.0
        since = shard.caught_up_since
        if since is None or shard.undelivered > 0:
            return 0.0
        return max(0.0, now - since)

    def close(self) -> None:
        """Stop, and hand every lease back (graceful handoff). Call it after
        the final commit."""
        self.stop()
        if self._closed:
            return
        self._closed = True
        self.shards.deactivate_all()
        try:
            self.coordinator.release_all()
        except Exception:  # noqa: BLE001 - the leases expire instead
            log.exception("worker %s: releasing leases failed", self.worker_id)
