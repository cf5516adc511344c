"""`run --processes 2`: the source in a producer process, the pipeline in
this one, joined by a bounded multiprocessing queue (seed 002's local mode)."""

from __future__ import annotations

import multiprocessing

from config.settings import Settings
from consumers.run_summary import RunSummary
from daemon.job import run_job
from producers.mp_queue import MpQueueReader, MpQueueWriter, make_queue
from streams.events import BatchKind
from streams.parsers import RecordParser


def _producer(source, queue, batch_size: int) -> None:
    writer = MpQueueWriter(queue, batch_size=batch_size)

    def on_next(batch) -> None:
        if batch.kind is BatchKind.DATA:
            writer.send(batch.records)

    source.observable().subscribe(on_next)
    writer.close()


def run_two_processes(settings: Settings, source, parser: RecordParser, queue_batches: int = 64) -> RunSummary:
    queue = make_queue(maxsize=queue_batches)
    child = multiprocessing.Process(target=_producer, args=(source, queue, settings.batch_size), name="producer", daemon=True)
    child.start()
    try:
        reader = MpQueueReader(queue, source.partition)
        summary = run_job(settings, reader.batches(), parser)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.terminate()
    if child.exitcode not in (0, None):
        raise RuntimeError(f"the producer process failed with exit code {child.exitcode}")
    return summary
