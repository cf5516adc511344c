"""Per-shard Kinesis checkpoints in a DynamoDB table, one KCL-like item per shard.

Item (hash key `leaseKey`)::

    leaseKey                     "<stream>:<shardId>"   (the KCL's multi-stream form;
                                                          shard ids repeat across streams)
    streamName, shardId          plain copies
    checkpoint                   sequence number (string) of the first user record
                                 that is NOT yet durable downstream
    checkpointSubSequenceNumber  index of that user record inside its (KPL
                                 aggregated) Kinesis record; 0 for plain records
    updatedAt                    epoch seconds of the last save

A reader resumes with `AT_SEQUENCE_NUMBER checkpoint` and skips the user
records of that Kinesis record below `checkpointSubSequenceNumber`. (The KCL
stores the last *processed* record instead; ours names the first unprocessed
one because the pipeline commits "everything before position P", and P's
predecessor is not known without keeping every delivered sequence number.)

This is deliberately a small class of its own: a later issue turns the table
into a lease table (owner, leaseCounter, conditional writes).

Usage::

    store = KinesisCheckpoints(aws_client("dynamodb", aws), "rivulet-leases", "events")
    store.save("shardId-000000000000", Checkpoint("49590338271490256608559692538361571095921575989136588898", 0))
    store.load("shardId-000000000000")
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

HASH_KEY = "leaseKey"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    sequence_number: str
    sub_sequence_number: int = 0


class KinesisCheckpoints:
    def __init__(self, client: Any, table: str, stream: str) -> None:
        self.client = client
        self.table = table
        self.stream = stream
        self.saves = 0

    def _key(self, shard_id: str) -> dict[str, dict[str, str]]:
        return {HASH_KEY: {"S": f"{self.stream}:{shard_id}"}}

    def load(self, shard_id: str) -> Checkpoint | None:
        item = self.client.get_item(TableName=self.table, Key=self._key(shard_id), ConsistentRead=True).get("Item")
        if not item or "checkpoint" not in item:
            return None
        return Checkpoint(item["checkpoint"]["S"], int(item.get("checkpointSubSequenceNumber", {}).get("N", "0")))

    def save(self, shard_id: str, checkpoint: Checkpoint) -> None:
        self.client.put_item(
            TableName=self.table,
            Item={
                **self._key(shard_id),
                "streamName": {"S": self.stream},
                "shardId": {"S": shard_id},
                "checkpoint": {"S": checkpoint.sequence_number},
                "checkpointSubSequenceNumber": {"N": str(checkpoint.sub_sequence_number)},
                "updatedAt": {"N": f"{time.time():.3f}"},
            },
        )
        self.saves += 1
