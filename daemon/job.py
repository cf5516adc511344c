"""Run one job: a source through the pipeline into the sinks it is given
(the composition root builds them: `root.sinks()`).

Usage::

    summary = run_job(settings, source.batches(), parser_for(settings), root.sinks())
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Callable

import reactivex

from config.settings import Settings
from daemon.progress import FilePosition, JobProgress, format_duration
from observability.health import HEALTH
from observability.metrics import QUEUE_DEPTH, PipelineMetrics
from observability.status_file import StatusFile
from consumers.fan_out import Commit, SinkFanOut
from consumers.sink_lane import SinkLane
from consumers.sink_thread import on_sink_thread
from consumers.ports import Sink
from consumers.run_summary import RunSummary
from producers.transport import wall_clock_us
from streams.batches import CountedBatch
from streams.formats import RecordParser, make_parser
from streams.count_windows import count_windows
from streams.pipeline import build_pipeline, make_counter

# Batches the sinks' thread may fall behind the counter: enough to ride out
# an fsync, few enough that memory stays that of a handful of batches.
SINK_QUEUE_BATCHES = 2

if TYPE_CHECKING:
    from consumers.counted_keys import RunKeys

log = logging.getLogger("rivulet")


def parser_for(settings: Settings, fmt: str | None = None) -> RecordParser:
    return make_parser(fmt or settings.format, settings.naive_timezone, settings.max_record_bytes)


def _run_keys(settings: Settings) -> RunKeys | None:
    """What the summary remembers of the run's keys for its late check,
    whenever raw events are archived. On S3 the archive costs two requests
    per hour with a late event, so the run remembers up to 32 MiB of keys.
    Locally reading is cheap, but not free: a 1M-row sparse run's late check
    read all 713 hours' objects (0.25-0.35 s). Its late events are re-sends
    of events up to about two hours older, so the last few hours' keys
    answer them: 4 MiB of keys (about 75,000) is dozens of such hours."""
    if not settings.raw_events.enabled:
        return None
    from consumers.counted_keys import LOCAL_RUN_KEYS_BYTES, RunKeys

    return RunKeys() if settings.backend == "aws" else RunKeys(max_bytes=LOCAL_RUN_KEYS_BYTES)


def run_job(
    settings: Settings,
    source: reactivex.Observable,
    parser: RecordParser,
    sinks: list[Sink],
    commit: Commit | None = None,
    wall_clock: Callable[[], int] = wall_clock_us,
    on_ready: Callable[[], None] | None = None,
    parsed: bool = False,
    unbounded: bool = False,
    name: str = "job",
    source_name: str = "",
    input_file: str | None = None,
    queue_depth: Callable[[], int] | None = None,
    sinks_thread: bool = False,
) -> RunSummary:
    """Subscribe the pipeline on this thread and block until the source
    completes; then flush and checkpoint every sink. Raises what broke the
    stream (a sink failure, never a bad record). With `parsed=True` the
    source already yields `ParsedBatch`es (parsed in another process).

    Logs at INFO a start line (profile, source, sinks, rollups), `ready`, a
    progress line every `[logging] progress_interval` and a stop line; on a
    terminal it draws a progress bar (bytes of `input_file`, when given)."""
    counter = make_counter(settings.rollups, settings.lateness, wall_clock, settings.future_tolerance,
                           settings.provisional_interval if unbounded else timedelta(0))
    summary = RunSummary(run_keys=_run_keys(settings), keep_late=settings.raw_events.enabled)
    metrics = PipelineMetrics()
    status = StatusFile(settings.data_dir, name, source_name) if source_name else None
    errors: list[BaseException] = []
    done = threading.Event()
    position = _file_position(input_file)
    # Lag is end-to-end on a live source; on a finite input it is only the input's age.
    progress = JobProgress(name, position, interval=settings.logging.progress_interval.total_seconds(),
                           lag=metrics.lag_seconds if unbounded else (lambda: None))
    depth_label = source_name.split(":", 1)[0] or "source"
    log.info("%s: starting: source %s, profile %s (backend %s, data %s), sinks %s, rollups %s, lateness %s",
             name, source_name or "?", settings.profile, settings.backend, settings.data_dir,
             ", ".join(getattr(s, "name", type(s).__name__) for s in sinks),
             ", ".join(r.name for r in settings.rollups), format_duration(settings.lateness))

    def after_batch(batch: CountedBatch) -> None:
        HEALTH.progress(batch.read)
        if queue_depth is not None:
            QUEUE_DEPTH.labels(depth_label).set(queue_depth())
        progress.update(summary)

    if sinks_thread:  # and each sink on a thread of its own: consumers/sink_lane.py
        sinks = [SinkLane(sink) for sink in sinks]
    fan_out = SinkFanOut(sinks, summary, commit, settings.checkpoint_interval, metrics=metrics,
                         on_checkpoint=(lambda points: status.update(points, metrics.newest_us, summary))
                         if status is not None else None, after_batch=after_batch)

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        done.set()

    if on_ready is not None:
        on_ready()
    log.info("%s: ready", name)
    stream = source.pipe(count_windows(counter)) if parsed else build_pipeline(source, parser, counter)
    if sinks_thread:  # sinks on a second core (a source without commits only: see consumers/sink_thread.py)
        stream = stream.pipe(on_sink_thread(SINK_QUEUE_BATCHES))
    stream.subscribe(fan_out.on_next, on_error, done.set)
    done.wait()
    progress.close()
    try:
        fan_out.close()
    finally:
        if status is not None:
            status.update(fan_out.checkpoints, metrics.newest_us, summary, state="failed" if errors else "stopped",
                          checkpointed=commit is not None)
        if errors:
            log.error("%s: stopped by an error after %s", name, progress.line(summary))
            raise errors[0]
    log.info("%s: stopped: %s; %d windows written in %.1f s", name, progress.line(summary).split(": ", 1)[1],
             summary.windows_written, summary.seconds)
    return summary


def _file_position(path: str | None) -> FilePosition | None:
    if not path:
        return None
    try:
        return FilePosition(path)
    except OSError:
        return None
