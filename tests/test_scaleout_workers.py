"""Issue 4: several `consume --from kinesis:STREAM` worker PROCESSES share a
4-shard stream through the lease table (moto server); crashes (SIGKILL),
scale-up and graceful scale-down keep the DynamoDB counts equal to the
independent oracle (tests/oracle.py).

Failover is 3 s and renewal 0.5 s here (RIVULET__AWS__FAILOVER_SECONDS,
RIVULET__AWS__LEASE_RENEW_SECONDS) to keep the tests short.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

from tests.scaleout_support import FAILOVER, RENEW, SPARSE_LATENESS, Cluster, event_lines, owners, sparse_lines

# One worker process of `make test` runs all the scale-out tests, one at a
# time: each starts three consumers, and their failover times are asserted.
pytestmark = [pytest.mark.timeout(150), pytest.mark.xdist_group("scaleout")]

SHARDS = 4
# Workers exit once the stream has been quiet this long (and they processed
# it): longer than a `produce` of the next chunk takes on a loaded machine,
# so no worker leaves between the chunks of a test. 8 s was once too short
# on a slow machine: every worker had left before the second chunk.
DRAIN = 12
POLL_SLACK = 1.5  # one poll of the lease table by the taker, plus process scheduling


def all_owned(leases: dict) -> bool:
    return len(leases) == SHARDS and all(l["owner"] for l in leases.values())


def taken_in_logs(cluster: Cluster, name: str) -> set[str]:
    return set(re.findall(r"took lease (shardId-\d+)", cluster.log(name)))


def test_three_workers_share_four_shards_and_counts_equal_the_oracle(aws_env: str, tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, SHARDS)
    cluster.produce(event_lines(3000, seed=21))
    try:
        for name in ("w1", "w2", "w3"):
            cluster.start(name, drain=4)
        leases = cluster.wait_for(lambda l: all_owned(l) and len(owners(l)) >= 2, timeout=30)
        codes = cluster.wait_all()
    finally:
        cluster.stop_all()
    assert codes == {"w1": 0, "w2": 0, "w3": 0}
    assert set(leases) == {f"shardId-{i:012d}" for i in range(SHARDS)}
    read_by = {name: taken_in_logs(cluster, name) for name in ("w1", "w2", "w3")}
    assert set().union(*read_by.values()) == set(leases)
    assert sum(1 for shards in read_by.values() if shards) >= 2  # shared, not one worker doing it all
    for name in ("w1", "w2", "w3"):
        assert "released lease" in cluster.log(name) or not read_by[name]
    final = cluster.leases()
    assert all(l["owner"] is None and l["checkpoint"] for l in final.values())  # handed back, checkpointed
    cluster.assert_counts_equal_the_oracle()


def _kill_and_measure_takeover(cluster: Cluster, victim: str) -> float:
    before = cluster.leases()
    victims = {s for s, l in before.items() if l["owner"] == victim}
    assert victims, f"{victim} holds no lease: {before}"
    killed_at = cluster.kill(victim, signal.SIGKILL)
    cluster.workers[victim].wait(timeout=10)
    cluster.wait_for(lambda l: all(l[s]["owner"] not in (None, victim) for s in victims),
                     timeout=FAILOVER + 15, every=0.05)
    took = time.monotonic() - killed_at
    # Not renewed for the failover time, then taken at the next lease round of
    # a survivor (every RENEW seconds), seen by our next poll.
    assert took <= FAILOVER + 2 * RENEW + POLL_SLACK, took
    return took


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_of_a_worker_at_a_random_point(aws_env: str, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    lines = event_lines(3000, seed=100 + seed)
    cut = sorted(rng.sample(range(500, 2500), 2))
    chunks = [lines[: cut[0]], lines[cut[0] : cut[1]], lines[cut[1] :]]
    kill_after = rng.randrange(2)  # after the first or second chunk
    cluster = Cluster(tmp_path, SHARDS)
    cluster.produce(chunks[0])
    try:
        for name in ("w1", "w2", "w3"):
            cluster.start(name, drain=DRAIN)
        cluster.wait_for(lambda l: all_owned(l) and len(owners(l)) >= 2, timeout=30)
        for i, chunk in enumerate(chunks[1:]):
            if i == kill_after:
                time.sleep(rng.uniform(0.0, 1.5))
                load = owners(cluster.leases())
                victim = rng.choice(sorted(load))
                _kill_and_measure_takeover(cluster, victim)
            cluster.produce(chunk)
        codes = cluster.wait_all()
    finally:
        cluster.stop_all()
    assert codes[victim] == -signal.SIGKILL
    assert all(code == 0 for name, code in codes.items() if name != victim)
    cluster.assert_counts_equal_the_oracle()


@pytest.mark.slow
def test_sigkill_right_after_a_window_flush_commit(aws_env: str, tmp_path: Path) -> None:
    """The victim dies right after a checkpoint moved, i.e. just after a window
    closed and its final counts were written: the new owner replays from that
    checkpoint with the stored watermark."""
    lines = event_lines(4000, seed=7)
    cluster = Cluster(tmp_path, SHARDS)
    # A shard's checkpoint stays at the first event of its oldest open window:
    # the customer_hourly window of the hour before BASE (the disorder puts
    # the first rows there), until the watermark passes that hour at about row
    # 1,200 (250 ms a row, 5 min lateness, disorder only backwards). Then it
    # moves once, to the first event of BASE's hour, in the shards whose first
    # events were in the hour before. So no checkpoint moves during the first
    # 1,000 rows, and the victim is chosen after one has moved: the owner of
    # that shard. (Choosing it before could pick a worker whose shards have
    # no such move, or whose move a lease steal gave to another worker.)
    cluster.produce(lines[:1000])
    try:
        for name in ("w1", "w2", "w3"):
            cluster.start(name, drain=DRAIN)
        start = cluster.wait_for(lambda l: all_owned(l) and len(owners(l)) >= 2, timeout=30)
        before = {s: l["checkpoint"] for s, l in start.items()}
        cluster.produce(lines[1000:2500])  # moves the watermark past that hour: checkpoints move
        moved = cluster.wait_for(lambda l: any(l[s]["owner"] and l[s]["checkpoint"] != c for s, c in before.items()),
                                 timeout=30, every=0.02)
        victim = next(l["owner"] for s, l in moved.items() if l["owner"] and l["checkpoint"] != before[s])
        _kill_and_measure_takeover(cluster, victim)
        cluster.produce(lines[2500:])
        codes = cluster.wait_all()
    finally:
        cluster.stop_all()
    assert all(code == 0 for name, code in codes.items() if name != victim)
    cluster.assert_counts_equal_the_oracle()


@pytest.mark.slow
def test_scale_up_from_one_to_three_workers_rebalances_without_loss(aws_env: str, tmp_path: Path) -> None:
    lines = event_lines(4000, seed=31)
    cluster = Cluster(tmp_path, SHARDS)
    cluster.produce(lines[:1500])
    try:
        cluster.start("w1", drain=DRAIN)
        cluster.wait_for(lambda l: all_owned(l) and set(owners(l)) == {"w1"}, timeout=30)  # a lone worker takes all
        cluster.start("w2", drain=DRAIN)
        cluster.start("w3", drain=DRAIN)
        cluster.produce(lines[1500:2800])
        spread = cluster.wait_for(lambda l: all_owned(l) and len(owners(l)) == 3, timeout=30)
        cluster.produce(lines[2800:])
        codes = cluster.wait_all()
    finally:
        cluster.stop_all()
    assert codes == {"w1": 0, "w2": 0, "w3": 0}
    assert sorted(owners(spread).values()) == [1, 1, 2]  # an even share
    assert "stolen from w1" in cluster.log("w2") + cluster.log("w3")  # taken one at a time from the most loaded
    cluster.assert_counts_equal_the_oracle()


@pytest.mark.slow
def test_scale_down_sigterm_hands_leases_back_without_loss(aws_env: str, tmp_path: Path) -> None:
    lines = event_lines(4000, seed=41)
    cluster = Cluster(tmp_path, SHARDS)
    cluster.produce(lines[:1500])
    try:
        for name in ("w1", "w2", "w3"):
            cluster.start(name, drain=DRAIN)
        leases = cluster.wait_for(lambda l: all_owned(l) and len(owners(l)) == 3, timeout=30)
        cluster.produce(lines[1500:2500])
        victim = owners(leases).most_common(1)[0][0]
        stopped_at = cluster.kill(victim, signal.SIGTERM)
        assert cluster.workers[victim].wait(timeout=30) == 0
        exited = time.monotonic() - stopped_at
        mine = [s for s, l in leases.items() if l["owner"] == victim]
        # Handed back at once: the survivors take the leases well before a failover would.
        after = cluster.wait_for(lambda l: all(l[s]["owner"] not in (None, victim) for s in mine), timeout=FAILOVER + 10)
        assert time.monotonic() - stopped_at < exited + FAILOVER
        assert "released lease" in cluster.log(victim)
        cluster.produce(lines[2500:])
        codes = cluster.wait_all()
    finally:
        cluster.stop_all()
    assert all(code == 0 for code in codes.values())
    assert victim not in owners(after)
    cluster.assert_counts_equal_the_oracle()


def test_sparse_three_workers_one_sigkilled_counts_equal_the_oracle(aws_env: str, tmp_path: Path) -> None:
    """The sparse workload (more windows than events, every window a few
    DynamoDB version items and S3 rows): a worker killed with leases in hand,
    its shards replayed by the survivors from its checkpoints, exact counts."""
    lines = sparse_lines(6000)
    cluster = Cluster(tmp_path, SHARDS, lateness=SPARSE_LATENESS)
    cluster.produce(lines[:3000])
    try:
        for name in ("w1", "w2", "w3"):
            cluster.start(name, drain=DRAIN)
        cluster.wait_for(lambda l: all_owned(l) and len(owners(l)) >= 2, timeout=30)
        # Its first checkpoints are written (it has been working), the rest is still to come.
        victim = owners(cluster.leases()).most_common(1)[0][0]
        mine = [s for s, l in cluster.leases().items() if l["owner"] == victim]
        cluster.wait_for(lambda l: any(l[s]["checkpoint"] for s in mine), timeout=30, every=0.05)
        _kill_and_measure_takeover(cluster, victim)
        cluster.produce(lines[3000:])
        codes = cluster.wait_all()
    finally:
        cluster.stop_all()
    assert codes[victim] == -signal.SIGKILL
    assert all(code == 0 for name, code in codes.items() if name != victim)
    cluster.assert_counts_equal_the_oracle()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RIVULET_TARGET_TESTS") != "1",
                    reason="issue 12 target measurement, minutes long: RIVULET_TARGET_TESTS=1")
@pytest.mark.timeout(600)
def test_sparse_50k_rows_three_workers_one_sigkilled_the_issue_12_target(aws_env: str, tmp_path: Path) -> None:
    """Issue 12's fleet target: the 50k-row sparse file on 4 shards, 3 workers
    (`consume --drain 5`), the one holding the most leases SIGKILLed 8 s in:
    exact counts, and (with RIVULET_ASSERT_TARGETS=1, the machine to itself)
    done within 90 s of starting the workers."""
    cluster = Cluster(tmp_path, SHARDS, lateness=SPARSE_LATENESS)
    cluster.produce(sparse_lines(50_000))
    started = time.monotonic()
    try:
        for name in ("w1", "w2", "w3"):
            cluster.start(name, drain=5)
        cluster.wait_for(lambda l: all_owned(l) and len(owners(l)) >= 2, timeout=60)
        time.sleep(max(0.0, 8.0 - (time.monotonic() - started)))
        victim = owners(cluster.leases()).most_common(1)[0][0]
        cluster.kill(victim, signal.SIGKILL)
        codes = cluster.wait_all(timeout=400)
    finally:
        cluster.stop_all()
    took = time.monotonic() - started
    print(f"fleet of 3 workers, {victim} SIGKILLed: done in {took:.1f} s")
    assert all(code == 0 for name, code in codes.items() if name != victim)
    cluster.assert_counts_equal_the_oracle()
    if os.environ.get("RIVULET_ASSERT_TARGETS") == "1":
        assert took <= 90, took
