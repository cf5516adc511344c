"""Run one job: a source through the pipeline into the configured sinks."""

from __future__ import annotations

import sys
import threading
from datetime import timedelta
from dataclasses import dataclass
from typing import Callable

import inject
import reactivex

from config.settings import Settings
from observability.health import HEALTH
from consumers.aggregate_writer import AggregateWriter
from consumers.count_sink import CountSink
from consumers.dead_letter_sink import DeadLetterOutput
from consumers.fan_out import Commit, SinkFanOut
from consumers.ports import CountStore, DeadLetterSink, ObjectStore, Sink
from consumers.raw_event_writer import RawEventWriter
from consumers.retrying_ports import RetryingCountStore, RetryingObjectStore
from consumers.run_summary import RunSummary
from producers.file_source import wall_clock_us
from streams.parsers import RecordParser, make_parser
from streams.count_windows import count_windows
from streams.pipeline import build_pipeline, make_counter


@dataclass
class JobOptions:
    format: str | None = None
    progress_total: int | None = None  # records expected, for the progress bar
    show_progress: bool = False


def build_sinks(settings: Settings) -> list[Sink]:
    """The sinks of the configured backend, in write order: dead letters and raw
    events first, counts last (so a count is never ahead of its raw data)."""
    objects = RetryingObjectStore(inject.instance(ObjectStore))
    sinks: list[Sink] = [DeadLetterOutput(inject.instance(DeadLetterSink))]
    if settings.raw_events.enabled:
        raw = settings.raw_events
        sinks.append(
            RawEventWriter(
                objects,
                format=raw.format,
                max_bytes=raw.max_bytes,
                max_age_seconds=raw.max_age.total_seconds(),
                max_open_objects=raw.max_open_objects,
                max_buffered_bytes=raw.max_buffered_bytes,
            )
        )
    if settings.aggregates.enabled:
        sinks.append(AggregateWriter(objects, settings.aggregates.key_template))
    sinks.append(CountSink(RetryingCountStore(inject.instance(CountStore))))
    # Stream events as Optimizely conversions: only when [optimizely.conversions] maps an event type.
    # (imported only then: the Optimizely SDK costs memory and start-up time)
    if settings.section("optimizely").get("conversions"):
        from optimizely_integration.wiring import build_conversion_sink

        conversions = build_conversion_sink(settings, inject.instance(DeadLetterSink))
        if conversions is not None:
            sinks.append(conversions)
    return sinks


def parser_for(settings: Settings, fmt: str | None = None) -> RecordParser:
    return make_parser(fmt or settings.format, settings.naive_timezone, settings.max_record_bytes)


def run_job(
    settings: Settings,
    source: reactivex.Observable,
    parser: RecordParser,
    commit: Commit | None = None,
    sinks: list[Sink] | None = None,
    wall_clock: Callable[[], int] = wall_clock_us,
    progress_total: int | None = None,
    on_ready: Callable[[], None] | None = None,
    parsed: bool = False,
    unbounded: bool = False,
) -> RunSummary:
    """Subscribe the pipeline on this thread and block until the source
    completes; then flush and checkpoint every sink. Raises what broke the
    stream (a sink failure, never a bad record). With `parsed=True` the
    source already yields `ParsedBatch`es (parsed in another process)."""
    counter = make_counter(settings.rollups, settings.lateness, wall_clock, settings.future_tolerance,
                           settings.provisional_interval if unbounded else timedelta(0))
    summary = RunSummary()
    fan_out = SinkFanOut(sinks if sinks is not None else build_sinks(settings), summary, commit, settings.checkpoint_interval)
    errors: list[BaseException] = []
    done = threading.Event()
    progress = _progress_bar(progress_total)

    def on_next(batch) -> None:
        fan_out.on_next(batch)
        HEALTH.progress(batch.read)
        if progress is not None:
            progress.update(batch.read)

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        done.set()

    if on_ready is not None:
        on_ready()
    stream = source.pipe(count_windows(counter)) if parsed else build_pipeline(source, parser, counter)
    stream.subscribe(on_next, on_error, done.set)
    done.wait()
    if progress is not None:
        progress.close()
    try:
        fan_out.close()
    finally:
        if errors:
            raise errors[0]
    return summary


def _progress_bar(total: int | None):
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="ev", unit_scale=True, leave=False, file=sys.stderr)
