"""Rx operator: deliver counted batches to the sinks on a thread of their own.

A file run is one synchronous chain: read, parse, count, then every sink,
then the next batch. The sinks' work (SQLite upserts, Parquet encoding,
fsyncs) runs mostly in C with the GIL released, as do the polars kernels of
parsing and counting, so putting the sinks on a second thread lets the two
halves overlap on two cores. A bounded queue keeps memory flat: the source
side waits when the sinks are `max_items` batches behind.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable

_DONE = object()


def on_sink_thread(max_items: int = 4, name: str = "sinks") -> Callable[[Observable], Observable]:
    """Items, errors and completion of the source, delivered in order on a
    new thread named `name`, at most `max_items` behind the source.

    If the observer fails (a sink raises), the source is disposed and its
    remaining items are dropped, so a blocked source never waits forever;
    the error reaches the observer's `on_error`.

    >>> counted.pipe(on_sink_thread(4)).subscribe(fan_out.on_next, on_error, on_completed)
    """

    def _on_sink_thread(source: Observable) -> Observable:
        def subscribe(observer: abc.ObserverBase, scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max_items)
            failed = threading.Event()
            upstream = CompositeDisposable()

            def deliver() -> None:
                while not failed.is_set():
                    kind, value = items.get()
                    try:
                        if kind == "next":
                            observer.on_next(value)
                        elif kind == "error":
                            observer.on_error(value)
                            return
                        else:
                            observer.on_completed()
                            return
                    except Exception as exc:  # a sink failed: stop the source, report once
                        failed.set()
                        upstream.dispose()
                        observer.on_error(exc)
                        return

            worker = threading.Thread(target=deliver, name=name, daemon=True)
            worker.start()

            def put(kind: str, value: Any) -> None:
                # Once delivery failed nothing is read any more: never block on it.
                while not failed.is_set():
                    try:
                        items.put((kind, value), timeout=0.2)
                        return
                    except queue.Full:
                        continue

            upstream.add(source.subscribe(
                lambda value: put("next", value),
                lambda error: put("error", error),
                lambda: put("completed", _DONE),
                scheduler=scheduler,
            ))
            return CompositeDisposable(upstream, Disposable(failed.set))

        return reactivex.create(subscribe)

    return _on_sink_thread
