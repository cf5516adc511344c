"""The lease glue of a Kinesis reader: which shards this worker reads, as
its `LeaseCoordinator` takes and loses their leases.

Usage::

    shards = ShardSet(settings, client, leases, worker_id, start_poller=start, stopped=lambda: reader_stopped)
    shards.coordinator.discover(); shards.coordinator.round()   # takes leases: start(shard) for each
    shards.maybe_finish(shard)                                  # retire a shard read to its end

- A lease taken: a `ShardState` that starts at the lease's checkpoint
  (AT_SEQUENCE_NUMBER, skipping the sub-records already durable; the stored
  watermark comes back as `resume_watermark_us` on the first batch), else
  `start_after[shard]` (AFTER_SEQUENCE_NUMBER), else TRIM_HORIZON for a
  child shard, else `iterator_type`: TRIM_HORIZON, LATEST or AT_TIMESTAMP.
  A child also lists the ancestors whose tails its poller replays first.
- A lease lost: the shard turns inactive; its poller stops at its next step
  and the reader drops its batches still queued.
- A shard read to SHARD_END whose every record is durable: its lease is
  retired (with the tail checkpoint its children replay it from).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from producers import kinesis_metrics as metrics
from producers.kinesis_lease_coordinator import LeaseCoordinator, ShardInfo
from producers.kinesis_lease_table import Lease, LeaseTable, Tail
from producers.kinesis_positions import POSITION_MAX, fresh_base, position_of
from producers.kinesis_settings import KinesisReaderSettings
from producers.kinesis_shard_poller import ShardState
from producers.transport import wall_clock_us
from streams.windowing import WATERMARK_MAX, WATERMARK_MIN

log = logging.getLogger(__name__)


class ShardSet:
    def __init__(
        self,
        settings: KinesisReaderSettings,
        client: Any,
        leases: LeaseTable,
        worker_id: str,
        start_poller: Callable[[ShardState], None],
        stopped: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        wall_clock_us: Callable[[], int] = wall_clock_us,
    ) -> None:
        self.settings = settings
        self.client = client
        self.leases = leases
        self.worker_id = worker_id
        self.start_poller = start_poller
        self.stopped = stopped  # a lease taken once the reader stopped is not read
        self.clock = clock
        self.wall_clock_us = wall_clock_us
        self.by_partition: dict[str, ShardState] = {}  # the shards whose lease we hold
        self.lock = threading.RLock()
        self._child_shards: set[str] = set()
        self._parents: dict[str, tuple[str, ...]] = {}  # of every listed shard
        self._last_status = 0.0
        self.coordinator = LeaseCoordinator(
            leases,
            worker_id,
            list_shards=self.list_shards,
            on_acquired=self.on_acquired,
            on_lost=self.on_lost,
            failover_seconds=settings.failover_seconds,
            renew_seconds=settings.lease_renew_seconds,
            discovery_seconds=settings.shard_discovery_seconds,
            clock=clock,
        )

    def partition_of(self, shard_id: str) -> str:
        return f"kinesis:{self.settings.stream}/{shard_id}"

    def shards(self) -> list[ShardState]:
        return list(self.by_partition.values())

    def get(self, partition: str) -> ShardState | None:
        return self.by_partition.get(partition)

    def list_shards(self) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        params: dict[str, Any] = {"StreamName": self.settings.stream}
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

    # -- the coordinator's callbacks (on its thread) -----------------------------

    def on_acquired(self, lease: Lease, how: str) -> None:
        if self.stopped():
            return
        shard = self.start_of(lease)
        with self.lock:
            old = self.by_partition.get(shard.partition)
            if old is not None:
                old.active = False
            self.by_partition[shard.partition] = shard
        self.start_poller(shard)

    def on_lost(self, shard_id: str, reason: str) -> None:
        with self.lock:
            shard = self.by_partition.pop(self.partition_of(shard_id), None)
        if shard is not None:
            shard.active = False  # the poller stops at its next step
            metrics.CHECKPOINT_LAG.labels(shard=shard_id).set(0)

    def start_of(self, lease: Lease) -> ShardState:
        """Where reading a shard starts, from its lease."""
        shard_id = lease.shard_id
        partition = self.partition_of(shard_id)
        settings = self.settings
        if lease.checkpoint is not None:
            start = {"ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": lease.checkpoint}
            resume = lease.position
            if resume is None:  # checkpointed by a release that stored no position
                resume = position_of(lease.checkpoint, lease.sub_sequence)
                if resume > POSITION_MAX // 2:
                    resume = fresh_base(self.wall_clock_us())
            # The checkpoint's record comes first; its sub-records before the
            # checkpointed one were durable already.
            shard = ShardState(shard_id, partition, start, skip_below=resume, committed=resume, end_position=resume,
                               next_position=resume - lease.sub_sequence)
        else:
            base = 0
            if shard_id in settings.start_after:
                start = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": settings.start_after[shard_id]}
                base = fresh_base(self.wall_clock_us())
            elif lease.parents or shard_id in self._child_shards:
                start = {"ShardIteratorType": "TRIM_HORIZON"}  # a child: from its first record, no gap
            elif settings.iterator_type == "AT_TIMESTAMP":
                start = {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": settings.start_timestamp}
                base = fresh_base(self.wall_clock_us())
            else:
                start = {"ShardIteratorType": settings.iterator_type}
                if settings.iterator_type != "TRIM_HORIZON":
                    base = fresh_base(self.wall_clock_us())
            shard = ShardState(shard_id, partition, start, skip_below=base, committed=base, end_position=base,
                               next_position=base)
        # Every ownership starts its partition afresh in the pipeline, with the
        # watermark stored with the checkpoint (the minimum when none is).
        shard.resume_watermark_us = lease.watermark_us if lease.watermark_us is not None else WATERMARK_MIN
        if lease.checkpoint is not None and lease.watermark_us is not None and lease.watermark_us < WATERMARK_MAX:
            shard.tail = Tail(lease.checkpoint, lease.sub_sequence, lease.watermark_us)
        if shard_id not in self._parents or not set(lease.parents) <= set(self._parents[shard_id]):
            # Another worker discovered this child and made its lease before our
            # own discovery listed it: without its parents here it would inherit
            # no dedup keys and count its parents' re-sent events again.
            self.list_shards()
        shard.inherits = self.ancestors(shard_id)
        return shard

    def ancestors(self, shard_id: str) -> list[tuple[str, Tail | None]]:
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

    # -- on behalf of the reader -----------------------------------------------------

    def maybe_finish(self, shard: ShardState) -> None:
        """A shard read to SHARD_END whose every record is durable: retire its lease."""
        if shard.retired or not shard.eof_taken or shard.committed < shard.end_position:
            return
        shard.retired = True
        self.coordinator.finish(shard.shard_id, shard.tail)
        with self.lock:
            if self.by_partition.get(shard.partition) is shard:
                del self.by_partition[shard.partition]

    def deactivate_all(self) -> None:
        """Stop every poller (before the leases are handed back)."""
        self.coordinator.acquiring = False
        with self.lock:
            for shard in self.by_partition.values():
                shard.active = False
            self.by_partition.clear()

    def log_status(self) -> None:
        now = self.clock()
        shards = sorted(self.shards(), key=lambda s: s.shard_id)
        for shard in shards:
            lag = now - shard.pending[0][1] if shard.pending else 0.0
            metrics.CHECKPOINT_LAG.labels(shard=shard.shard_id).set(lag)
        if now - self._last_status < 10.0:
            return
        self._last_status = now
        log.info(
            "worker %s: %d leases held of stream %s (%d workers seen): %s",
            self.worker_id, len(shards), self.settings.stream, self.coordinator.workers_seen,
            ", ".join(
                f"{s.shard_id} behind={s.behind_ms if s.behind_ms is not None else '?'}ms "
                f"checkpoint_lag={now - s.pending[0][1] if s.pending else 0.0:.1f}s"
                for s in shards
            ) or "none",
        )
