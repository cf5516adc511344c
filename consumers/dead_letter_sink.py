"""The dead-letter output as a sink of counted batches."""

from __future__ import annotations

from consumers.ports import DeadLetterSink
from streams.batches import CountedBatch


class DeadLetterOutput:
    name = "dead-letters"

    def __init__(self, target: DeadLetterSink) -> None:
        self.target = target

    def write(self, batch: CountedBatch) -> None:
        self.target.write(batch.dead_letters)

    def flush(self) -> None:
        self.target.flush()

    def pending_floor(self, partition: str) -> int | None:
        return None

    def close(self) -> None:
        self.target.close()
