"""Kinesis shard leases in DynamoDB, KCL style: the lease items and their
conditional reads and writes (which worker reads which shard, and where).

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

Every write is conditional on the `leaseCounter` the writer last saw (and on
the owner, for an owner's writes), so two workers never both believe they
hold a shard. The policy (who takes what, when) is
`producers/kinesis_lease_coordinator.py`.

Usage::

    client, name = ensure_lease_table(config, group="default", create=True)
    table = LeaseTable(client, name, "events")
    table.create("shardId-000000000000")
    lease = table.take(table.get("shardId-000000000000"), "worker-1")
    lease = table.checkpoint(lease, "worker-1", sequence, 0, watermark_us, position)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

import botocore.exceptions

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
