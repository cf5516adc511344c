"""`run --processes 2`: the source and the parser in a producer process, the
counting and the sinks in this one, joined by a bounded multiprocessing queue
(seed 002's local mode).

The producer parses at the edge and ships parsed batches as plain columns
(`streams/parsed_columns.py`), so the two processes split the work: reading
and parsing on one core, windows and sinks on the other. The queue holds at
most `queue_batches` batches; a full queue blocks the producer.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from typing import Callable

import reactivex
from reactivex import abc

from config.settings import Settings
from consumers.ports import Sink
from consumers.run_summary import RunSummary
from daemon.job import run_job
from streams.formats import RecordParser
from streams.parsed_columns import from_columns, to_columns

_END = None


def _producer(source, parser: RecordParser, queue) -> None:
    def on_next(batch) -> None:
        queue.put(to_columns(parser.parse_batch(batch)))

    try:
        source.batches().subscribe(on_next)
        if source.damage:  # a damaged compressed input: the parent reports it
            queue.put(str(source.damage))
    finally:
        queue.put(_END)


def _parsed_batches(queue, child: multiprocessing.Process, source=None) -> reactivex.Observable:
    def subscribe(observer: abc.ObserverBase, scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        while True:
            try:
                item = queue.get(timeout=1.0)
            except queue_module.Empty:
                if not child.is_alive():
                    observer.on_error(RuntimeError(f"the producer process died (exit code {child.exitcode})"))
                    break
                continue
            if item is _END:
                observer.on_completed()
                break
            if isinstance(item, str):  # what the source's damage was, in the child
                source.damage = item
                continue
            observer.on_next(from_columns(item))
        return reactivex.disposable.Disposable()

    return reactivex.create(subscribe)


def run_two_processes(settings: Settings, source, parser: RecordParser, build_sinks: Callable[[], list[Sink]],
                      queue_batches: int = 16) -> RunSummary:
    """`build_sinks` is called after the fork: the producer inherits no store
    connection nor thread of the sinks."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue(maxsize=queue_batches)
    child = ctx.Process(target=_producer, args=(source, parser, queue), name="producer", daemon=True)
    child.start()
    try:
        summary = run_job(settings, _parsed_batches(queue, child, source), parser, build_sinks(), parsed=True,
                          sinks_thread=True)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.terminate()
    if child.exitcode not in (0, None):
        raise RuntimeError(f"the producer process failed with exit code {child.exitcode}")
    return summary
