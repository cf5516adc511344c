"""The one backoff policy, against its own definition computed independently."""

import random
import threading
import time

import pytest
from hypothesis import given, strategies as st

from resilience.backoff import Backoff, sleep_unless


@given(st.floats(0.001, 5), st.floats(0.001, 120), st.floats(0, 1), st.integers(0, 200), st.integers(0, 2**32))
def test_delay_stays_within_the_jittered_ceiling(base, cap, jitter, attempt, seed):
    delay = Backoff(base, cap, jitter, rng=random.Random(seed)).delay(attempt)
    ceiling = cap if attempt >= 60 else min(cap, base * 2.0**attempt)
    assert ceiling * (1 - jitter) - 1e-9 <= delay <= ceiling + 1e-9


def test_no_jitter_doubles_until_the_cap():
    backoff = Backoff(0.5, 3.0, jitter=0)
    assert [backoff.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_retry_after_is_a_floor_bounded_by_the_cap():
    backoff = Backoff(0.1, 5.0, jitter=0)
    assert backoff.delay(0, retry_after=2.0) == 2.0
    assert backoff.delay(0, retry_after=60.0) == 5.0


def test_full_jitter_spreads_retries():
    backoff = Backoff(1.0, 8.0, rng=random.Random(7))
    delays = {round(backoff.delay(3), 6) for _ in range(50)}
    assert len(delays) > 40 and min(delays) < 4.0


@pytest.mark.parametrize("kwargs", [{"base": -1}, {"cap": -1}, {"jitter": 1.5}])
def test_bad_policy_is_refused(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_sleep_unless_wakes_when_stopped():
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    sleep_unless(stop.is_set, 10.0)
    assert time.monotonic() - started < 2.0
