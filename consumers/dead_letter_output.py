"""The dead-letter output: the `Sink` of counted batches that hands each
batch's dead letters to a `DeadLetterSink` (the port that stores them, e.g.
`dead_letter_file.DeadLetterFile`).

Usage::

    output = DeadLetterOutput(DeadLetterFile(settings.dead_letter_path))
    output.write(batch)      # batch.dead_letters go to the file
    output.flush()           # durable before the source is checkpointed
"""

from __future__ import annotations

from consumers.ports import DeadLetterSink, Sink
from streams.batches import CountedBatch


class DeadLetterOutput(Sink):
    name = "dead-letters"

    def __init__(self, target: DeadLetterSink) -> None:
        self.target = target

    def write(self, batch: CountedBatch) -> None:
        self.target.write(batch.dead_letters)

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:
        self.target.close()
