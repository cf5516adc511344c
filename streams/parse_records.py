"""Rx operator: parse record batches into events and dead letters."""

from __future__ import annotations

from typing import Callable

import reactivex
from reactivex import operators as ops

from streams.batches import ParsedBatch, RecordBatch
from streams.formats import RecordParser


def parse_records(parser: RecordParser) -> Callable[[reactivex.Observable[RecordBatch]], reactivex.Observable[ParsedBatch]]:
    """Map each `RecordBatch` to a `ParsedBatch`.

    Bad records become dead letters inside the batch; nothing a record holds
    can raise out of the parser, so one bad line never ends the stream.

    >>> source.pipe(parse_records(EventsCsvParser()), count_windows(counter))
    """
    return ops.map(parser.parse_batch)
