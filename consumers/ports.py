"""The ports of the consumer side. Each has one adapter per backend: local
(SQLite, a directory laid out as S3 keys) and AWS (DynamoDB, S3)."""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

from streams.batches import CountedBatch
from streams.events import DeadLetter
from streams.window_counts import WindowCounts


class CountStore(Protocol):
    """Window counts you can query.

    Contract, shared by every adapter:
    - one partial count per (rollup, key, window start, source partition);
    - `upsert` never lowers a stored count: it writes max(stored, new), so
      re-running the same input, a replay after a crash, or a provisional
      count of an open window never doubles nor shrinks a count;
    - a different source partition adds;
    - queries and exports return the sum over partitions;
    - an upsert is durable once `commit` returns (an adapter may make it
      durable sooner); what was upserted but not committed may be lost in a
      crash, so the source must not checkpoint past it before `commit`;
      queries may not see it before then either.
    """

    def upsert(self, windows: Sequence[WindowCounts]) -> None:
        """Max-upsert every row of every frame (one frame per rollup and
        source partition)."""

    def commit(self) -> None:
        """Make everything upserted so far durable (SQLite: end the open
        transaction; DynamoDB: nothing, each write already is)."""

    def buckets(self, rollup: str, key: tuple[str, ...], start_us: int, end_us: int) -> list[tuple[int, int]]:
        """(window start, count) for windows with start in [start_us, end_us), ascending."""

    def export(self, rollup: str) -> Iterator[tuple[int, tuple[str, ...], int]]:
        """(window start, key, count) of every window, by window start then key."""

    def total(self, rollup: str, key: tuple[str, ...]) -> int:
        """All-time count of `key`: the sum over all windows."""

    def close(self) -> None: ...


class ObjectStore(Protocol):
    """Objects by S3-style key (`a/b/c.jsonl.gz`)."""

    def put(self, key: str, body: bytes) -> None:
        """Write the object whole: a reader never sees part of it. It need
        not be durable before `sync`."""

    def sync(self) -> None:
        """Make every object put so far durable. Sinks call it in `flush`,
        before the source is checkpointed past what the objects hold."""

    def get(self, key: str) -> bytes: ...

    def list(self, prefix: str = "") -> Iterator[str]: ...


class DeadLetterSink(Protocol):
    def write(self, letters: Sequence[DeadLetter]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """A consumer of counted batches (raw events, aggregates, counts, ...).

    A sink may subclass `Sink` to inherit the defaults of what it does not
    need: `send`, `flush` and `close` do nothing, `pending_floor` is None
    (nothing is left pending once `flush` returned)."""

    name: str

    def write(self, batch: CountedBatch) -> None:
        """Take the batch; it may buffer, but must not lose it."""
        raise NotImplementedError

    def send(self) -> None:
        """Start making everything taken so far durable, without waiting: hand
        what is buffered to the backend. A checkpoint calls it on every sink
        before it waits on any `flush`, so that one sink's uploads overlap
        another's encoding and uploads instead of following them."""

    def flush(self) -> None:
        """Make everything taken so far durable, except what `pending_floor`
        still reports: a sink may keep a buffer across checkpoints (the raw
        events' objects are cut by age, not by checkpoints), and the source
        is then checkpointed below it."""

    def pending_floor(self, partition: str) -> int | None:
        """The lowest source position taken but not yet durable, if any."""
        return None

    def close(self) -> None:
        """Flush, and release what the sink holds."""
