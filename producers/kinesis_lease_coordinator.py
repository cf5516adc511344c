"""One worker's Kinesis lease policy, KCL style: renew what it holds, take
what is available up to a fair share, balance by taking from the most loaded
worker, hand everything back on a graceful stop.

Expiry is decided the KCL way: a lease whose `leaseCounter` did not change
for `failover_seconds` of THIS worker's monotonic clock is expired. Clocks of
other hosts are never compared. The lease items and their conditional writes
are `producers/kinesis_lease_table.py`; the reader runs `round()` on its own
thread (`producers/kinesis_shard_set.py`).

Usage::

    coordinator = LeaseCoordinator(table, "worker-1", list_shards, on_acquired, on_lost)
    coordinator.discover()
    coordinator.round()                      # every `round_every` seconds
    coordinator.checkpoint(shard_id, sequence, sub, watermark_us, position)
    coordinator.release_all()                # graceful handoff, after the final checkpoint
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import botocore.exceptions

from producers import kinesis_metrics as metrics
from producers.kinesis_lease_table import Lease, LeaseTable, Tail

log = logging.getLogger(__name__)


@dataclass
class Held:
    lease: Lease
    renewed_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class ShardInfo:
    shard_id: str
    parents: tuple[str, ...] = ()


class LeaseCoordinator:
    """One worker's lease policy. Every `renew_seconds` it renews what it
    holds (a failed condition = lost: `on_lost`); twice as often (so that an
    expiry is noticed within failover time plus half a renew interval) it scans
    the table and takes leases:

    - available leases (no owner, or expired: counter unchanged for
      `failover_seconds` here, or owned under our own worker id by an earlier
      reader) whose parents are finished, up to the fair share
      ceil(available shards / live workers);
    - otherwise, below the fair share, at most ONE lease per round from the
      most loaded worker, only if that leaves it with at least as many as us
      (no ping-pong).

    `on_acquired(lease)` starts reading (from `lease.checkpoint`); it runs on
    the coordinator's thread. New shards are discovered every
    `discovery_seconds` (and at once after `discover_soon()`)."""

    def __init__(
        self,
        table: LeaseTable,
        worker_id: str,
        list_shards: Callable[[], list[ShardInfo]],
        on_acquired: Callable[[Lease, str], None],
        on_lost: Callable[[str, str], None],
        failover_seconds: float = 10.0,
        renew_seconds: float = 0.0,
        discovery_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.worker_id = worker_id
        self.list_shards = list_shards
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.failover = failover_seconds
        self.renew_every = renew_seconds if renew_seconds > 0 else failover_seconds / 3
        self.round_every = self.renew_every / 2
        self.discovery_every = discovery_seconds
        self.clock = clock
        self.held: dict[str, Held] = {}
        self._held_lock = threading.RLock()
        self._seen: dict[str, tuple[int, float]] = {}  # shard -> (counter, first seen at)
        self._next_discovery = 0.0
        self._rng = random.Random()
        self.acquiring = True
        self.rounds = 0
        self.nothing_waiting_since: float | None = None  # for --drain
        self.all_finished = False  # every lease of the stream is finished (a closed stream)
        self.workers_seen = 1
        self._known_shards: set[str] = set()

    # -- discovery --------------------------------------------------------------

    def discover_soon(self) -> None:
        self._next_discovery = 0.0

    def discover(self) -> None:
        shards = self.list_shards()
        listed = {s.shard_id for s in shards}
        for shard in shards:
            if shard.shard_id in self._known_shards:
                continue
            # A parent that ListShards no longer returns (past retention) has
            # nothing left to read: it does not hold its children back.
            parents = tuple(p for p in shard.parents if p in listed)
            if self.table.create(shard.shard_id, parents):
                log.info("worker %s: new lease for %s (parents %s)", self.worker_id, shard.shard_id, list(parents) or "none")
            self._known_shards.add(shard.shard_id)
        self._next_discovery = self.clock() + self.discovery_every

    # -- one round -----------------------------------------------------------------

    def round(self) -> None:
        now = self.clock()
        if now >= self._next_discovery:
            self.discover()
        self.renew_all()
        leases = self.table.scan()
        now = self.clock()
        self.rounds += 1
        by_id = {l.shard_id: l for l in leases}
        for lease in leases:  # expiry: the counter did not move for failover time
            seen = self._seen.get(lease.shard_id)
            if seen is None or seen[0] != lease.counter:
                self._seen[lease.shard_id] = (lease.counter, now)

        def parents_done(lease: Lease) -> bool:
            return all(p not in by_id or by_id[p].finished for p in lease.parents)

        def unchanged_for(lease: Lease) -> float:
            return now - self._seen[lease.shard_id][1]

        active = [l for l in leases if not l.finished and parents_done(l)]
        self.all_finished = bool(leases) and all(l.finished for l in leases)
        with self._held_lock:
            mine = set(self.held)
        others = [l for l in active if l.shard_id not in mine]
        available = [
            l for l in others
            if l.owner is None or l.owner == self.worker_id or unchanged_for(l) >= self.failover
        ]
        live_owned = [l for l in others if l not in available]
        counts: dict[str, int] = {}
        for lease in live_owned:
            counts[lease.owner] = counts.get(lease.owner, 0) + 1  # type: ignore[index]
        workers = len(set(counts) | {self.worker_id})
        self.workers_seen = workers
        target = math.ceil(len(active) / workers) if active else 0
        # --drain: a lease waits for an owner when nobody owns it, or its owner
        # stopped renewing (more than two renew intervals: dead or stuck).
        waiting = [l for l in others if l in available or unchanged_for(l) >= 2 * self.renew_every + 0.5]
        metrics.WORKERS.labels(stream=self.table.stream).set(workers)
        try:
            if self.acquiring:
                self._acquire(available, live_owned, counts, len(mine), target)
        finally:
            if any(l.shard_id not in self.held for l in waiting):
                self.nothing_waiting_since = None
            elif self.nothing_waiting_since is None:
                self.nothing_waiting_since = self.clock()

    def _acquire(self, available: list[Lease], live_owned: list[Lease], counts: dict[str, int], held: int, target: int) -> None:
        self._rng.shuffle(available)
        # Unowned first, then our own (an earlier reader of this process), then expired.
        available.sort(key=lambda l: 0 if l.owner is None else 1 if l.owner == self.worker_id else 2)
        took = 0
        for lease in available:
            if held >= target:
                break
            how = "unowned" if lease.owner is None else "own" if lease.owner == self.worker_id else "expired"
            if self._take(lease, how):
                held += 1
                took += 1
        if took or held >= target or not counts:
            return
        victim, most = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        if most > held + 1:
            candidates = [l for l in live_owned if l.owner == victim]
            self._take(self._rng.choice(candidates), f"stolen from {victim}")

    def _take(self, lease: Lease, how: str) -> bool:
        taken = self.table.take(lease, self.worker_id)
        if taken is None:
            log.info("worker %s: lease %s changed before we could take it", self.worker_id, lease.shard_id)
            return False
        with self._held_lock:
            self.held[taken.shard_id] = Held(taken, self.clock())
        metrics.LEASES_TAKEN.labels(stream=self.table.stream, how=how.split(" ")[0]).inc()
        metrics.LEASES_HELD.labels(stream=self.table.stream).set(len(self.held))
        log.info(
            "worker %s: took lease %s (%s; previous owner %s) at checkpoint %s; now holding %d",
            self.worker_id, taken.shard_id, how, lease.owner or "none", taken.checkpoint or "none", len(self.held),
        )
        try:
            self.on_acquired(taken, how)
        except Exception:
            self._drop(taken.shard_id, "could not start reading")
            raise
        return True

    def renew_all(self) -> None:
        now = self.clock()
        with self._held_lock:
            held = list(self.held.items())
        for shard_id, h in held:
            if now - h.renewed_at < self.renew_every * 0.9:
                continue  # rounds run twice per renew interval; renew once
            with h.lock:
                if self.held.get(shard_id) is not h:
                    continue
                try:
                    renewed = self.table.renew(h.lease, self.worker_id)
                except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                    log.warning("worker %s: renewing %s failed: %s", self.worker_id, shard_id, type(exc).__name__)
                    if now - h.renewed_at >= self.failover:
                        self._drop(shard_id, "not renewed within failover time")
                    continue
                if renewed is None:
                    self._drop(shard_id, "taken by another worker")
                    continue
                h.lease, h.renewed_at = renewed, now

    # -- writes on behalf of the reader ----------------------------------------------

    def _write(self, shard_id: str, write: Callable[[Lease], Lease | None], what: str) -> Lease | None:
        with self._held_lock:
            h = self.held.get(shard_id)
        if h is None:
            return None
        with h.lock:
            if self.held.get(shard_id) is not h:
                return None
            result = write(h.lease)
            if result is None:
                self._drop(shard_id, f"{what} refused: taken by another worker")
                return None
            h.lease = result
            return result

    def checkpoint(self, shard_id: str, sequence: str, sub: int, watermark_us: int | None, position: int | None = None) -> bool:
        done = self._write(shard_id, lambda l: self.table.checkpoint(l, self.worker_id, sequence, sub, watermark_us, position),
                           "checkpoint")
        if done is not None:
            metrics.CHECKPOINTS.labels(stream=self.table.stream).inc()
        return done is not None

    def finish(self, shard_id: str, tail: Tail | None = None) -> bool:
        done = self._write(shard_id, lambda l: self.table.finish(l, self.worker_id, tail), "finish")
        if done is None:
            return False
        with self._held_lock:
            self.held.pop(shard_id, None)
            metrics.LEASES_HELD.labels(stream=self.table.stream).set(len(self.held))
        metrics.LEASES_FINISHED.labels(stream=self.table.stream).inc()
        log.info("worker %s: shard %s finished (SHARD_END checkpointed); lease retired", self.worker_id, shard_id)
        self.discover_soon()  # its children may need leases now
        return True

    def release_all(self) -> None:
        """Graceful handoff of everything held (after the final checkpoint)."""
        self.acquiring = False
        with self._held_lock:
            held = list(self.held)
        for shard_id in held:
            try:
                done = self._write(shard_id, lambda l: self.table.release(l, self.worker_id), "release")
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                log.warning("worker %s: releasing %s failed (%s); it expires instead", self.worker_id, shard_id, type(exc).__name__)
                done = None
            with self._held_lock:
                self.held.pop(shard_id, None)
            if done is not None:
                metrics.LEASES_RELEASED.labels(stream=self.table.stream).inc()
                log.info("worker %s: released lease %s (graceful handoff)", self.worker_id, shard_id)
        metrics.LEASES_HELD.labels(stream=self.table.stream).set(0)

    def _drop(self, shard_id: str, reason: str) -> None:
        with self._held_lock:
            if self.held.pop(shard_id, None) is None:
                return
            left = len(self.held)
        # The lease now waits for an owner (maybe us again): --drain must not
        # see "nothing held, nothing waiting" before the next round says so.
        self.nothing_waiting_since = None
        metrics.LEASES_LOST.labels(stream=self.table.stream).inc()
        metrics.LEASES_HELD.labels(stream=self.table.stream).set(left)
        log.info("worker %s: lost lease %s (%s); now holding %d", self.worker_id, shard_id, reason, left)
        self.on_lost(shard_id, reason)

    def holds(self, shard_id: str) -> bool:
        return shard_id in self.held
