"""The transport port: how records travel between a producer and a consumer.

A transport is named by a URI (`spool:DIR`, `mpqueue`, `console`, later
`kinesis:STREAM`, `sqs:QUEUE`). The writer side takes encoded records (one NDJSON
line each, without the newline). The reader side is an observable of
`RecordBatch`es. Positions are monotonic within a partition; `commit(partition,
position)` says every record before `position` is durable in every sink, and
only then may the transport forget it (or, after a restart, skip it).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import reactivex


class TransportFull(RuntimeError):
    """The transport cannot take more right now; retry later (HTTP 503)."""


class TransportWriter(Protocol):
    def send(self, records: Sequence[bytes]) -> int:
        """Durably hand over `records`; returns how many were accepted.

        Blocks up to the transport's own timeout, then raises `TransportFull`.
        """

    def close(self) -> None: ...


class TransportReader(Protocol):
    def batches(self) -> reactivex.Observable:
        """RecordBatches, DATA while records arrive, IDLE on an empty caught-up
        poll, EOF only if the transport is finite. Completes after `stop()`."""

    def commit(self, partition: str, position: int, watermark_us: int | None = None) -> None:
        """Records of `partition` before `position` are durable downstream.

        `watermark_us` is the watermark a replay from `position` must start
        with, so that it decides exactly as the first run did (an event that
        was late stays late). A reader that stores it hands it back as
        `RecordBatch.resume_watermark_us` on its first batch of that partition.
        """

    def stop(self) -> None: ...

    def caught_up_seconds(self) -> float:
        """How long every partition has been caught up (for `--drain`)."""
