"""Run lines through the real parser and counter, in batches of chosen sizes."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Iterable, Sequence

from streams.batches import CountedBatch, RecordBatch
from streams.csv_parser import EventsCsvParser
from streams.events import WindowCount
from streams.pipeline import make_counter
from streams.rollups import RollupSpec
from streams.windowing import TumblingWindower
from tests.oracle import DEFAULT_ROLLUPS

FAR_FUTURE_CLOCK = 4_102_444_800_000_000  # 2100-01-01: nothing in the tests is "future" unless meant to be


def window_rows(batch: CountedBatch) -> list[WindowCount]:
    """Every row of `batch.windows`, final and provisional, as one `WindowCount`."""
    return [row for counts in batch.windows for row in counts.rows()]


def default_rollups() -> tuple[RollupSpec, ...]:
    """The oracle's `DEFAULT_ROLLUPS` (those of the shipped configs) as the counter's specs."""
    return tuple(RollupSpec(name, (key,), TumblingWindower(size)) for name, (key, size) in DEFAULT_ROLLUPS.items())


def batches_of(lines: Sequence[str], sizes: Iterable[int], partition: str = "p") -> list[RecordBatch]:
    out, i, sizes = [], 0, iter(sizes)
    while i < len(lines):
        n = max(1, next(sizes, 1000))
        chunk = lines[i:i + n]
        out.append(RecordBatch.data(partition, [c.encode() for c in chunk], range(i + 1, i + 1 + len(chunk))))
        i += n
    out.append(RecordBatch.eof(partition))
    return out


def run_counter(lines: Sequence[str], lateness: timedelta, sizes: Iterable[int] = (), now_us: int = FAR_FUTURE_CLOCK):
    parser = EventsCsvParser()
    counter = make_counter(default_rollups(), lateness, lambda: now_us).build("p")
    results: list[CountedBatch] = [counter.on_batch(parser.parse_batch(b)) for b in batches_of(lines, sizes)]
    counts: dict[str, Counter] = {r.name: Counter() for r in default_rollups()}
    for result in results:
        for c in window_rows(result):
            assert c.final
            key = (c.window_start_us, c.key[0])
            assert key not in counts[c.rollup], "a window was emitted twice"
            counts[c.rollup][key] = c.count
    return counts, results
