import random

import pytest

from consumers.retrying_ports import STOP_REQUESTED, StoppableBackoff, RetryingObjectStore, retry_until_done
from observability.health import PipelineHealth


class FlakyStore:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.objects: dict[str, bytes] = {}
        self.calls = 0

    def put(self, key, body):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("connection refused")
        self.objects[key] = body


def test_retries_until_the_service_returns_and_reports_health():
    sleeps = []
    health = PipelineHealth()
    backoff = StoppableBackoff(base=0.1, cap=2.0, rng=random.Random(1), sleep=sleeps.append)
    store = FlakyStore(failures=12)
    states = []

    def call():
        states.append(health.healthy)
        store.put("k", b"v")

    retry_until_done(call, "object store", backoff, health)
    assert store.objects == {"k": b"v"} and store.calls == 13
    assert len(sleeps) == 12 and max(sleeps) <= 2.0  # capped
    assert states[0] is True and states[5] is False  # the outage was visible
    assert health.healthy


def test_a_stop_request_ends_the_wait_with_the_error():
    store = RetryingObjectStore(FlakyStore(failures=10**9), StoppableBackoff(sleep=lambda s: STOP_REQUESTED.set()))
    try:
        with pytest.raises(ConnectionError):
            store.put("k", b"v")
    finally:
        STOP_REQUESTED.clear()


def test_backoff_is_jittered_and_capped():
    backoff = StoppableBackoff(base=1, cap=8, rng=random.Random(2))
    delays = [backoff.delay(a) for a in range(10) for _ in range(20)]
    assert max(delays) <= 8 and len(set(round(d, 3) for d in delays)) > 100


def test_a_bad_argument_is_not_retried():
    class Refusing:
        calls = 0

        def put(self, key, body):
            self.calls += 1
            raise ValueError("unsafe object key")

    inner = Refusing()
    with pytest.raises(ValueError):
        RetryingObjectStore(inner, StoppableBackoff(sleep=lambda s: None)).put("../x", b"")
    assert inner.calls == 1
