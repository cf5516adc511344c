"""A sink that does its work on a thread of its own: one lane per sink.

On the sinks' thread (`sink_thread.py`) every sink takes a batch in turn:
Parquet encoding of the raw events, then of the aggregates, then the SQLite
upserts. Each of those spends most of its time in C with the GIL released,
so run one after the other they leave the second core idle while the source
side waits on the slowest chain. In lanes, each sink takes the batches in
order on its own thread, and a checkpoint waits for every lane: `flush`
returns only once the sink has written every batch handed to it and flushed,
so the fan-out still commits the source only past what every sink holds
durably.

A sink's error is raised on the caller's thread by the next call (`write`,
`send`, `flush` or `close`), and the lane takes nothing more: the job stops
as it would have with the sink on the caller's thread, at most `max_behind`
batches later (the source is not committed past the failure either way).

A lane times and counts each write itself, on its thread
(`rivulet_sink_latency_seconds`, `rivulet_sink_writes_total`,
`rivulet_sink_failures_total`), so the metrics time the write, not the
hand-off (`times_own_writes`: the fan-out then leaves them alone).

The job puts the sinks of a file run in lanes (docs/benchmarks.md, "Sink
lanes"): on 1M sparse rows the default `run` took 2.93 s instead of 3.13 s
(5 alternated pairs), at ~25 MiB more peak RSS (the batches the lanes hold).

>>> lanes = [SinkLane(sink) for sink in sinks]
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

from consumers.ports import Sink
from observability.metrics import timed_sink
from streams.batches import CountedBatch

# Batches a lane may be behind the caller: the caller waits beyond it, so a
# slow sink bounds memory instead of growing a queue.
DEFAULT_MAX_BEHIND = 4

_STOP = object()


class SinkLane(Sink):
    """`sink`, driven from its own thread, in the order of the calls."""

    times_own_writes = True

    def __init__(self, sink: Sink, max_behind: int = DEFAULT_MAX_BEHIND) -> None:
        self.sink = sink
        self.name = getattr(sink, "name", type(sink).__name__)
        self._work: queue.Queue[object] = queue.Queue(maxsize=max_behind)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            task = self._work.get()
            if task is _STOP:
                return
            call, done = task  # type: ignore[misc]
            try:
                if self._error is None:
                    call()
            except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread
                self._error = exc
            finally:
                if done is not None:
                    done.set()

    def _submit(self, call: Callable[[], None], wait: bool = False) -> None:
        self._raise()
        done = threading.Event() if wait else None
        self._work.put((call, done))
        if done is not None:
            done.wait()
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, batch: CountedBatch) -> None:
        self._submit(lambda: self._timed_write(batch))

    def _timed_write(self, batch: CountedBatch) -> None:
        with timed_sink(self.name):
            self.sink.write(batch)

    def send(self) -> None:
        self._submit(self.sink.send)

    def flush(self) -> None:
        self._submit(self.sink.flush, wait=True)

    def pending_floor(self, partition: str) -> int | None:
        # Read after `flush` returned (the fan-out's commit): the lane is idle.
        return self.sink.pending_floor(partition)

    def close(self) -> None:
        try:
            self._submit(self.sink.close, wait=True)
        finally:
            self._work.put(_STOP)
            self._thread.join()
