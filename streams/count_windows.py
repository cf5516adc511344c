"""Rx operator: event-time window counting per source partition."""

from __future__ import annotations

from typing import Callable

import reactivex
from reactivex import Observable, abc

from streams.batches import BatchKind, ParsedBatch
from streams.window_counter import PartitionCounter, WindowCounter


def count_windows(counter: WindowCounter) -> Callable[[Observable[ParsedBatch]], Observable]:
    """Turn `ParsedBatch`es into `CountedBatch`es, one `PartitionCounter` per
    source partition.

    State lives in a dict made per subscription (as `ops.scan` does), never in
    `group_by`, which keeps every group forever. A partition's state is dropped
    at its EOF. A finite source sends EOF before it completes. When a source
    completes with partitions still open (an unbounded source that was stopped
    or drained), their open windows are flushed as provisional counts: they are
    written, but not final, and `safe_position` does not pass them, so a restart
    replays and completes them.

    >>> batches.pipe(parse_records(parser), count_windows(counter)).subscribe(sink)
    """

    def _count_windows(source: Observable[ParsedBatch]) -> Observable:
        def subscribe(observer: abc.ObserverBase, scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            partitions: dict[str, PartitionCounter] = {}

            def on_next(parsed: ParsedBatch) -> None:
                name = parsed.partition
                state = partitions.get(name)
                resume = parsed.source.resume_watermark_us
                if state is None or (resume is not None and (
                        parsed.source.kind is BatchKind.INHERITED or not state.inheriting)):
                    # A (re)start of the partition (e.g. a Kinesis lease taken
                    # back): replay from its checkpoint starts from scratch;
                    # after its parents' INHERITED batches, from their state.
                    state = partitions[name] = counter.build(name, resume)
                try:
                    counted = state.on_batch(parsed)
                except Exception as exc:  # a bug, not bad input: parsers never raise
                    observer.on_error(exc)
                    return
                if parsed.source.kind is BatchKind.EOF:
                    del partitions[name]
                observer.on_next(counted)

            def on_completed() -> None:
                for state in list(partitions.values()):
                    observer.on_next(state.on_stop())
                partitions.clear()
                observer.on_completed()

            return source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)

        return reactivex.create(subscribe)

    return _count_windows
