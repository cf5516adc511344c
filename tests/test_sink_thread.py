"""The hand-off operator: order, completion, errors and a failing consumer."""

from __future__ import annotations

import threading

import reactivex
from reactivex import operators as ops

from consumers.sink_thread import on_sink_thread


def _run(source, on_next=lambda v: None):
    got, errors, done = [], [], threading.Event()
    threads = set()

    def next_(value):
        threads.add(threading.current_thread().name)
        on_next(value)
        got.append(value)

    source.pipe(on_sink_thread(2, name="test-sinks")).subscribe(
        next_, lambda e: (errors.append(e), done.set()), done.set)
    assert done.wait(10), "never completed"
    return got, errors, threads


def test_items_arrive_in_order_on_their_own_thread_then_completion():
    got, errors, threads = _run(reactivex.from_iterable(range(1000)))
    assert got == list(range(1000))
    assert errors == []
    assert threads == {"test-sinks"}


def test_a_source_error_is_delivered_after_the_items_before_it():
    source = reactivex.from_iterable(range(5)).pipe(ops.concat(reactivex.throw(ValueError("boom"))))
    got, errors, _ = _run(source)
    assert got == list(range(5))
    assert [str(e) for e in errors] == ["boom"]


def test_a_failing_consumer_stops_a_source_that_would_block_forever():
    produced = []

    def endless(observer, scheduler=None):
        stop = threading.Event()

        def loop():
            i = 0
            while not stop.is_set() and i < 100_000:
                produced.append(i)
                observer.on_next(i)
                i += 1
            observer.on_completed()

        loop()
        return reactivex.disposable.Disposable(stop.set)

    def fail_at_3(value):
        if value == 3:
            raise RuntimeError("sink down")

    # The source never waits on a full queue that nobody reads: _run returns.
    got, errors, _ = _run(reactivex.create(endless), fail_at_3)
    assert got == [0, 1, 2]
    assert [str(e) for e in errors] == ["sink down"]
