"""Issue 4, resharding: a shard split, and two shards merged, while two workers
consume. Kinesis is kinesalite 3.3.3 (moto writes to closed parents after a
split); DynamoDB and S3 stay on moto. Children are discovered while running
(ListShards ParentShardId), read only after every parent reached SHARD_END and
its lease was retired, and the counts equal the oracle.

Issue 13: re-sent duplicates of events read from a parent are written after
the reshard, so they land in a child (another partition): the child inherits
its parents' dedup keys and watermark, and counts them once."""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.aws_fixtures import client
from tests.scaleout_support import Cluster, event_lines, kinesalite, owners  # noqa: F401 - fixture

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow, pytest.mark.xdist_group("scaleout")]  # one at a time (test_scaleout_workers.py)

PARENT = "shardId-000000000000"
OTHER = "shardId-000000000001"


def resent(lines: list[str]) -> list[str]:
    """The valid rows of `lines` again (the same events re-sent): written after
    the reshard, each lands in a child of the shard its original went to."""
    return [line for line in lines if line.count(",") == 3 and "garbage" not in line]


def _stamp(line: str) -> datetime:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_split_mid_stream_children_after_parent_counts_exact(kinesalite: str, tmp_path: Path) -> None:
    lines = event_lines(3000, seed=5, unique_events=True)
    duplicates = resent(lines[1100:1200])  # from the parent's last records: on time in its children
    cluster = Cluster(tmp_path, shards=2)
    cluster.produce(lines[:1200])
    violations: list[dict] = []
    seen_children_owned: list[dict] = []
    done = threading.Event()

    def observe() -> None:  # children may have an owner only once the parent is finished
        while not done.is_set():
            leases = cluster.leases()
            children = [s for s, l in leases.items() if PARENT in l["parents"]]
            if any(leases[c]["owner"] for c in children):
                seen_children_owned.append(leases)
                if not leases[PARENT]["finished"]:
                    violations.append(leases)
            time.sleep(0.05)

    watcher = threading.Thread(target=observe, daemon=True)
    try:
        for name in ("w1", "w2"):
            cluster.start(name, drain=8)  # quiet longer than a produce of the next chunk takes
        cluster.wait_for(lambda l: len(l) == 2 and all(x["owner"] for x in l.values()), timeout=30)
        watcher.start()
        kinesis = client("kinesis", kinesalite)
        shard = next(s for s in kinesis.list_shards(StreamName=cluster.stream)["Shards"] if s["ShardId"] == PARENT)
        low, high = int(shard["HashKeyRange"]["StartingHashKey"]), int(shard["HashKeyRange"]["EndingHashKey"])
        kinesis.split_shard(StreamName=cluster.stream, ShardToSplit=PARENT, NewStartingHashKey=str((low + high) // 2))
        cluster.produce(duplicates + lines[1200:2200])  # goes to the children (and to the untouched shard 1)
        leases = cluster.wait_for(
            lambda l: len(l) == 4 and l[PARENT]["finished"] and any(x["owner"] for s, x in l.items() if x["parents"]),
            timeout=40,
        )
        cluster.produce(lines[2200:])
        codes = cluster.wait_all()
    finally:
        done.set()
        cluster.stop_all()
    assert all(code == 0 for code in codes.values()), codes
    children = sorted(s for s, l in leases.items() if l["parents"] == [PARENT])
    assert len(children) == 2
    final = cluster.leases()
    assert final[PARENT]["finished"] and final[PARENT]["checkpoint"] == "SHARD_END" and final[PARENT]["owner"] is None
    assert seen_children_owned and not violations, violations[:1]
    # In the logs too: a child was taken only after the parent's lease was retired.
    logs = "\n".join(cluster.log(name) for name in cluster.workers)
    finished_at = [_stamp(l) for l in logs.splitlines() if f"shard {PARENT} finished" in l]
    child_taken = [_stamp(l) for l in logs.splitlines() if re.search(rf"took lease ({'|'.join(children)})", l)]
    assert len(finished_at) == 1 and child_taken and min(child_taken) >= finished_at[0]
    assert not [l for l in logs.splitlines() if f"took lease {PARENT}" in l and _stamp(l) > finished_at[0]]
    cluster.assert_counts_equal_the_oracle()


def test_merge_child_after_both_parents_duplicates_counted_once(kinesalite: str, tmp_path: Path) -> None:
    lines = event_lines(3000, seed=9, unique_events=True)
    duplicates = resent(lines[1000:1200])  # their originals were read from both parents
    cluster = Cluster(tmp_path, shards=2)
    cluster.produce(lines[:1200])
    violations: list[dict] = []
    seen_child_owned: list[dict] = []
    done = threading.Event()

    def observe() -> None:  # the child may have an owner only once both parents are finished
        while not done.is_set():
            leases = cluster.leases()
            children = [s for s, l in leases.items() if l["parents"]]
            if any(leases[c]["owner"] for c in children):
                seen_child_owned.append(leases)
                if not (leases[PARENT]["finished"] and leases[OTHER]["finished"]):
                    violations.append(leases)
            time.sleep(0.05)

    watcher = threading.Thread(target=observe, daemon=True)
    try:
        for name in ("w1", "w2"):
            cluster.start(name, drain=8)
        cluster.wait_for(lambda l: len(l) == 2 and all(x["owner"] for x in l.values()), timeout=30)
        watcher.start()
        kinesis = client("kinesis", kinesalite)
        kinesis.merge_shards(StreamName=cluster.stream, ShardToMerge=PARENT, AdjacentShardToMerge=OTHER)
        cluster.produce(duplicates + lines[1200:2200])  # all of it goes to the merged child
        leases = cluster.wait_for(
            lambda l: len(l) == 3 and l[PARENT]["finished"] and l[OTHER]["finished"]
            and any(x["owner"] for x in l.values() if x["parents"]),
            timeout=40,
        )
        cluster.produce(lines[2200:])
        codes = cluster.wait_all()
    finally:
        done.set()
        cluster.stop_all()
    assert all(code == 0 for code in codes.values()), codes
    children = [s for s, l in leases.items() if l["parents"]]
    assert len(children) == 1 and leases[children[0]]["parents"] == [PARENT, OTHER]
    final = cluster.leases()
    assert all(final[p]["finished"] and final[p]["checkpoint"] == "SHARD_END" for p in (PARENT, OTHER))
    assert seen_child_owned and not violations, violations[:1]
    cluster.assert_counts_equal_the_oracle()
