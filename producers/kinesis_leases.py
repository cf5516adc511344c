"""Kinesis shard leases in DynamoDB, KCL style: which worker reads which shard.

One item per shard in the lease table (`[aws] lease_table`, by default the
checkpoint table `rivulet-leases`; per consumer group `<name>-<group>`). The
checkpoint lives in the same item, so a lease and its checkpoint change
together, conditionally::

    leaseKey                      "<stream>:<shardId>"  (hash key)
    streamName, shardId           plain copies
    leaseOwner                    worker id holding it; absent = nobody
    leaseCounter                  bumped by EVERY change; every write is
                                  conditional on the value the writer last saw
    checkpoint                    sequence number of the first user record NOT yet
                                  durable downstream, or "SHARD_END"
    checkpointSubSequenceNumber   its index inside a KPL aggregate
    checkpointPosition            that user record's position (the reader numbers a
                                  shard's user records; a new owner continues the numbering)
    watermark_us                  the watermark a replay from `checkpoint` starts with
    ownerSwitchesSinceCheckpoint  owner changes since the last checkpoint (churn)
    parentShardIds                string set: the shard's parents (resharding)
    finished                      1 once the shard was read to SHARD_END and its
                                  final checkpoint written (the lease is retired)
    tailCheckpoint,               written with `finished`: the last checkpoint with
    tailSubSequenceNumber,        a known watermark before SHARD_END, where the
    tailWatermark_us              shard's children replay it from to inherit its
                                  dedup keys and watermark (absent: from its start)
    updatedAt                     epoch seconds, for people (never for expiry)

Expiry is decided the KCL way: a lease whose `leaseCounter` did not change
for `failover_seconds` of THIS worker's monotonic clock is expired. Clocks of
other hosts are never compared.

`LeaseTable` is the storage; `LeaseCoordinator` the per-worker policy (renew,
take, balance, release), run on its own thread by `producers/kinesis_reader.py`.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import botocore.exceptions

from producers import kinesis_metrics as metrics
from aws.clients import aws_client
from aws.errors import error_code
from aws.resources import ensure_table
from aws.settings import AwsConfig

HASH_KEY = "leaseKey"


def checkpoint_table_name(config: AwsConfig, group: str) -> str:
    """One checkpoint table per consumer group, as the KCL has one per application."""
    base = config.lease_table or config.checkpoint_table
    return base if group == "default" else f"{base}-{group}"


def ensure_lease_table(config: AwsConfig, group: str, create: bool) -> tuple[Any, str]:
    """The lease (and checkpoint) table of a consumer group: a DynamoDB client
    and the table's name, the table created first with `create`."""
    dynamodb = aws_client("dynamodb", config)
    table = checkpoint_table_name(config, group)
    ensure_table(dynamodb, table, create, HASH_KEY)
    return dynamodb, table
SHARD_END = "SHARD_END"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tail:
    """A checkpoint a replay can start from and decide exactly as the first
    reading did: (sequence number, sub-record) and the watermark with it."""

    sequence: str
    sub_sequence: int
    watermark_us: int


@dataclass(frozen=True)
class Lease:
    shard_id: str
    counter: int = 0
    owner: str | None = None
    checkpoint: str | None = None  # None: never checkpointed
    sub_sequence: int = 0
    position: int | None = None  # of the checkpointed user record (None: written by an older release)
    watermark_us: int | None = None
    parents: tuple[str, ...] = ()
    finished: bool = False
    owner_switches: int = 0
    tail: Tail | None = None  # of a finished lease: where its children replay it from

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "Lease":
        def s(name: str) -> str | None:
            return item[name]["S"] if name in item else None

        def n(name: str) -> int | None:
            return int(item[name]["N"]) if name in item else None

        parents = tuple(sorted(item["parentShardIds"]["SS"])) if "parentShardIds" in item else ()
        tail_sequence, tail_watermark = s("tailCheckpoint"), n("tailWatermark_us")
        tail = None
        if tail_sequence is not None and tail_watermark is not None:
            tail = Tail(tail_sequence, n("tailSubSequenceNumber") or 0, tail_watermark)
        return cls(
            shard_id=s("shardId") or s(HASH_KEY).rsplit(":", 1)[1],  # type: ignore[union-attr]
            counter=n("leaseCounter") or 0,
            owner=s("leaseOwner") or None,
            checkpoint=s("checkpoint"),
            sub_sequence=n("checkpointSubSequenceNumber") or 0,
            position=n("checkpointPosition"),
            watermark_us=n("watermark_us"),
            parents=parents,
            finished=bool(n("finished")) or s("checkpoint") == SHARD_END,
            owner_switches=n("ownerSwitchesSinceCheckpoint") or 0,
            tail=tail,
        )


class LeaseTable:
    """Conditional reads and writes of one stream's lease items."""

    def __init__(self, client: Any, table: str, stream: str) -> None:
        self.client = client
        self.table = table
        self.stream = stream
        self.writes = 0

    def key(self, shard_id: str) -> dict[str, dict[str, str]]:
        return {HASH_KEY: {"S": f"{self.stream}:{shard_id}"}}

    # -- reads ----------------------------------------------------------------

    def get(self, shard_id: str) -> Lease | None:
        item = self.client.get_item(TableName=self.table, Key=self.key(shard_id), ConsistentRead=True).get("Item")
        return Lease.from_item(item) if item else None

    def scan(self) -> list[Lease]:
        leases: list[Lease] = []
        params: dict[str, Any] = {
            "TableName": self.table,
            "ConsistentRead": True,
            "FilterExpression": "streamName = :s",
            "ExpressionAttributeValues": {":s": {"S": self.stream}},
        }
        while True:
            page = self.client.scan(**params)
            leases.extend(Lease.from_item(item) for item in page.get("Items", ()))
            if not page.get("LastEvaluatedKey"):
                return leases
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # -- writes (all conditional) ----------------------------------------------

    def create(self, shard_id: str, parents: Iterable[str] = ()) -> bool:
        """Create the lease if there is none; adopt a checkpoint-only item (from
        before leases) by giving it a counter. True if this call wrote."""
        parents = sorted(set(p for p in parents if p))
        item: dict[str, Any] = {
            **self.key(shard_id),
            "streamName": {"S": self.stream},
            "shardId": {"S": shard_id},
            "leaseCounter": {"N": "0"},
            "ownerSwitchesSinceCheckpoint": {"N": "0"},
            "updatedAt": {"N": f"{time.time():.3f}"},
        }
        if parents:
            item["parentShardIds"] = {"SS": parents}
        try:
            self.client.put_item(TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(leaseKey)")
            self.writes += 1
            return True
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
        values: dict[str, Any] = {":z": {"N": "0"}, ":s": {"S": self.stream}, ":id": {"S": shard_id}}
        sets = "leaseCounter = :z, ownerSwitchesSinceCheckpoint = :z, streamName = :s, shardId = :id"
        if parents:
            sets += ", parentShardIds = :p"
            values[":p"] = {"SS": parents}
        try:  # an item written by the checkpoint store of issue 3: no counter yet
            self.client.update_item(
                TableName=self.table, Key=self.key(shard_id), UpdateExpression="SET " + sets,
                ConditionExpression="attribute_not_exists(leaseCounter)", ExpressionAttributeValues=values,
            )
            self.writes += 1
            return True
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            return False

    def _update(self, lease: Lease, sets: dict[str, Any], removes: Iterable[str] = (), owner: str | None = None) -> Lease | None:
        """One conditional write: `lease.counter` must still be current (and the
        owner `owner`, when given); bumps the counter. None if the condition failed."""
        names = {"#c": "leaseCounter"}
        values: dict[str, Any] = {":c": {"N": str(lease.counter)}, ":n": {"N": str(lease.counter + 1)}}
        parts = ["#c = :n", "updatedAt = :t"]
        values[":t"] = {"N": f"{time.time():.3f}"}
        for i, (name, value) in enumerate(sets.items()):
            names[f"#a{i}"] = name
            values[f":a{i}"] = value
            parts.append(f"#a{i} = :a{i}")
        expression = "SET " + ", ".join(parts)
        removes = list(removes)
        if removes:
            for i, name in enumerate(removes):
                names[f"#r{i}"] = name
            expression += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(removes)))
        condition = "#c = :c" if lease.counter else "(attribute_not_exists(#c) OR #c = :c)"
        if owner is not None:
            names["#o"] = "leaseOwner"
            values[":o"] = {"S": owner}
            condition += " AND #o = :o"
        try:
            item = self.client.update_item(
                TableName=self.table, Key=self.key(lease.shard_id), UpdateExpression=expression,
                ConditionExpression=condition, ExpressionAttributeNames=names, ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        self.writes += 1
        return Lease.from_item(item)

    def take(self, lease: Lease, owner: str) -> Lease | None:
        """Become the owner (of an unowned, expired or stolen lease). The
        returned lease carries the checkpoint as of the take."""
        switches = lease.owner_switches + (1 if lease.owner != owner else 0)
        return self._update(lease, {"leaseOwner": {"S": owner}, "ownerSwitchesSinceCheckpoint": {"N": str(switches)}})

    def renew(self, lease: Lease, owner: str) -> Lease | None:
        return self._update(lease, {}, owner=owner)

    def checkpoint(self, lease: Lease, owner: str, sequence: str, sub: int, watermark_us: int | None,
                   position: int | None = None) -> Lease | None:
        sets = {
            "checkpoint": {"S": sequence},
            "checkpointSubSequenceNumber": {"N": str(sub)},
            "ownerSwitchesSinceCheckpoint": {"N": "0"},
        }
        if position is not None:
            sets["checkpointPosition"] = {"N": str(position)}
        if watermark_us is not None:
            sets["watermark_us"] = {"N": str(watermark_us)}
        return self._update(lease, sets, removes=() if watermark_us is not None else ("watermark_us",), owner=owner)

    def finish(self, lease: Lease, owner: str, tail: Tail | None = None) -> Lease | None:
        """SHARD_END reached and everything before it durable: retire the
        lease, keeping `tail` for the children (None: they replay it all)."""
        sets: dict[str, Any] = {"checkpoint": {"S": SHARD_END}, "finished": {"N": "1"}}
        if tail is not None:
            sets["tailCheckpoint"] = {"S": tail.sequence}
            sets["tailSubSequenceNumber"] = {"N": str(tail.sub_sequence)}
            sets["tailWatermark_us"] = {"N": str(tail.watermark_us)}
        return self._update(lease, sets, removes=("leaseOwner",), owner=owner)

    def release(self, lease: Lease, owner: str) -> Lease | None:
        """Graceful handoff: no owner, so any worker may take it at once."""
        return self._update(lease, {}, removes=("leaseOwner",), owner=owner)


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
        self._shard_parents: dict[str, tuple[str, ...]] = {}

    # -- discovery --------------------------------------------------------------

    def discover_soon(self) -> None:
        self._next_discovery = 0.0

    def discover(self) -> None:
        shards = self.list_shards()
        listed = {s.shard_id for s in shards}
        for shard in shards:
            self._shard_parents[shard.shard_id] = shard.parents
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
