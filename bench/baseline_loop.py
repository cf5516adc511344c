#!/usr/bin/env python3
"""The plain-loop baseline of the pipeline's counts-only job
(`run --config bench/counts_only.toml`), written the way a careful engineer
would write it in plain CPython: one loop, the standard library, no framework.

    python bench/baseline_loop.py FILE OUT_DIR [--lateness 600]
    python bench/baseline_loop.py FILE OUT_DIR --check PIPELINE_DATA_DIR [--config bench/counts_only.toml]

The job, with the pipeline's rules (README, "Event-time semantics"):

* Each line is `customer_id,event_type,transaction_id,timestamp`; the header
  and blank lines are skipped; a row without four non-empty fields, with a
  timestamp outside the contract (`YYYY-MM-DD[T ]HH:MM[:SS[.f{1,9}]]` and
  `Z`, `+HH`, `+HHMM` or `+HH:MM`: an offset is required) or an impossible
  date is counted as malformed and skipped. The time of an event is
  `datetime.fromisoformat(ts).timestamp()`, UTC epoch seconds as a float
  (exact to the microsecond at these magnitudes).
* Watermark = the newest event time seen − lateness (10 minutes). An event
  older than the watermark is late: counted and dropped, before dedup.
* Dedup key (customer, event type, transaction, UTC instant), kept in a set
  per open hour: a re-send that is not late falls in an open hour.
* A dict of counts per open window: customer × hour and event type × minute.
  Once the watermark passes a window's end it is written as CSV rows
  (`window_start,key,count`, the layout of the pipeline's `export`) and
  forgotten with its dedup keys, so memory follows the open windows.

The file is read in blocks of 256 KiB, each decoded and split into lines in
C; a block holding a quote, a NUL or a byte that is not UTF-8 hands those lines to
the careful per-line path, as do rows the fast path does not accept.

`--check DIR` then compares the CSVs with the pipeline's `export` of
`customer_hourly` and `event_type_minutely` from a data dir the pipeline
filled from the same file (`run --config bench/counts_only.toml`), and exits 1
on any difference.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from datetime import datetime
from heapq import heappop, heappush

HEADER = "customer_id,event_type,transaction_id,timestamp"
CONTRACT = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?(?:\.\d{1,9})?(?:Z|[+-]\d{2}(?::?\d{2})?)", re.ASCII)
BLOCK = 1 << 18
ROLLUPS = {"customer_hourly": ("customer_id", 3600), "event_type_minutely": ("event_type", 60)}
# The contract as a shape: every digit read as "9", so the timestamps of a
# file have a handful of shapes, each checked against the regex once.
_NINES = bytes.maketrans(b"0123456789", b"9999999999")
_CONTRACT_SHAPE = re.compile(CONTRACT.pattern.replace(r"\d", "9").encode())


class WindowWriter:
    """Closed windows of one rollup, as `window_start,key,count` CSV rows."""

    def __init__(self, out_dir: str, rollup: str) -> None:
        key_name, self.width = ROLLUPS[rollup]
        self.file = open(os.path.join(out_dir, rollup + ".csv"), "w", encoding="utf-8", newline="")
        self.file.write(f"window_start,{key_name},count\n")
        self.rows = self.events = 0

    def write(self, index: float, counts: dict[str, int]) -> None:
        label = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(index) * self.width))
        keys = sorted(counts)
        joined = "\n".join(keys)  # no key holds a newline
        if "," in joined or '"' in joined or "\r" in joined:  # quoted as CSV, as `export` does
            self.file.write("".join([f"{label},{_csv_field(key)},{counts[key]}\n" for key in keys]))
        else:
            self.file.write("".join([f"{label},{key},{counts[key]}\n" for key in keys]))
        self.rows += len(counts)
        self.events += sum(counts.values())

    def close(self) -> None:
        self.file.close()


def _csv_field(key: str) -> str:
    if "," in key or '"' in key or "\r" in key:
        return '"' + key.replace('"', '""') + '"'
    return key


def blocks_of_lines(path: str):
    """Lists of lines (str, without newline), about BLOCK bytes at a time.

    A line the fast path must not see (a quote: CSV quoting; a NUL; not UTF-8)
    is handed over as a 1-tuple `(line,)` (None for bytes that are not
    UTF-8), which makes the fast path fail and take the per-line path."""
    with open(path, "rb") as f:
        rest = b""
        while True:
            block = f.read(BLOCK)
            if not block:
                break
            block = rest + block
            cut = block.rfind(b"\n") + 1
            if not cut:
                rest = block
                continue
            rest = block[cut:]
            yield _lines(block[:cut - 1])
        if rest:
            yield _lines(rest)


def _lines(data: bytes) -> list:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        lines = []
        for raw in data.split(b"\n"):
            try:
                lines.append(raw.decode())
            except UnicodeDecodeError:
                lines.append((None,))
        return [(line,) if type(line) is str and ('"' in line or "\x00" in line) else line for line in lines]
    lines = text.split("\n")
    if '"' in text or "\x00" in text:
        lines = [(line,) if '"' in line or "\x00" in line else line for line in lines]
    return lines


def run(path: str, out_dir: str, lateness: float = 600.0) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    # The pipeline's collector policy (daemon/gc_policy.py), for the same
    # reason: the open hours hold ~1M dedup tuples, which CPython's default
    # thresholds would walk over and over (about 10% of the run). Nothing here
    # makes a cycle; reference counting frees it all.
    gc.set_threshold(100_000, 10, 10)
    fromiso = datetime.fromisoformat
    nines = _NINES
    shape_ok: dict[bytes, bool] = {}  # timestamp shape -> within the contract
    known_shape = shape_ok.get
    hourly_out = WindowWriter(out_dir, "customer_hourly")
    minutely_out = WindowWriter(out_dir, "event_type_minutely")
    hours: dict[float, tuple[dict[str, int], set]] = {}  # open hour -> (counts per customer, dedup keys)
    minutes: dict[float, dict[str, int]] = {}  # open minute -> counts per event type
    inf = float("inf")
    newest = watermark = -inf
    next_close = inf  # end of the oldest open minute: no window can close before it
    hour_start = hour_end = minute_start = minute_end = inf  # the windows of the last event
    counts: dict[str, int] = {}
    seen: set = set()
    per_type: dict[str, int] = {}
    read = duplicates = late = malformed = 0

    hour_heap: list[float] = []  # the open hours and minutes, oldest first
    minute_heap: list[float] = []

    def close(watermark: float) -> float:
        """Write and forget the windows that end at or before the watermark,
        oldest first; return the end of the oldest window left open."""
        while minute_heap and (minute_heap[0] + 1) * 60 <= watermark:
            m = heappop(minute_heap)
            minutely_out.write(m, minutes.pop(m))
        while hour_heap and (hour_heap[0] + 1) * 3600 <= watermark:
            h = heappop(hour_heap)
            hourly_out.write(h, hours.pop(h)[0])
        return min((minute_heap[0] + 1) * 60 if minute_heap else inf, (hour_heap[0] + 1) * 3600 if hour_heap else inf)

    def careful(item) -> tuple | None:
        """The per-line path: every rule spelled out. None: skip the line."""
        nonlocal malformed
        line = item[0] if type(item) is tuple else item
        if line is None:  # not UTF-8
            malformed += 1
            return None
        text = line.strip()
        if not text or text == HEADER:
            return None
        if "\x00" in text:
            malformed += 1
            return None
        if '"' in text:
            import csv

            try:
                fields = next(csv.reader([text]))
            except csv.Error:
                malformed += 1
                return None
        else:
            fields = text.split(",")
        if len(fields) != 4 or not all(fields):
            malformed += 1
            return None
        customer, event_type, txn, stamp = fields
        stamp = stamp.strip()
        shape = stamp.encode().translate(nines)
        if len(shape_ok) > 4096:  # garbage makes endless shapes
            shape_ok.clear()
        shape_ok[shape] = _CONTRACT_SHAPE.fullmatch(shape) is not None
        if not shape_ok[shape]:
            malformed += 1
            return None
        try:
            moment = fromiso(stamp)  # more than 6 fraction digits: truncated
        except ValueError:  # 2021-02-30, 25:00, +24:00
            malformed += 1
            return None
        return customer, event_type, txn, moment

    for lines in blocks_of_lines(path):
        read += len(lines)
        for line in lines:
            try:
                c, e, t, ts = line.split(",")
                # fromisoformat alone accepts more than the contract (no offset,
                # compact and week dates, offsets with seconds ...).
                if known_shape(ts.encode().translate(nines)) is not True or not (c and e and t):
                    raise ValueError
                d = fromiso(ts)  # and it rejects impossible values: 2021-02-30, 25:00
            except (ValueError, AttributeError):
                row = careful(line)
                if row is None:
                    continue
                c, e, t, d = row
            s = d.timestamp()
            if s > newest:
                newest = s
                watermark = s - lateness
                if watermark >= next_close:
                    next_close = close(watermark)
                    hour_start = hour_end = minute_start = minute_end = inf
            elif s < watermark:
                late += 1
                continue
            if not hour_start <= s < hour_end:  # events come roughly in order: keep the last window at hand
                h = s // 3600
                window = hours.get(h)
                if window is None:
                    window = hours[h] = ({}, set())
                    heappush(hour_heap, h)
                counts, seen = window
                hour_start = h * 3600
                hour_end = hour_start + 3600
            key = (c, e, t, s)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            counts[c] = counts.get(c, 0) + 1
            if not minute_start <= s < minute_end:
                m = s // 60
                per_type = minutes.get(m)
                if per_type is None:
                    per_type = minutes[m] = {}
                    heappush(minute_heap, m)
                    if (m + 1) * 60 < next_close:
                        next_close = (m + 1) * 60
                minute_start = m * 60
                minute_end = minute_start + 60
            per_type[e] = per_type.get(e, 0) + 1
    close(inf)
    hourly_out.close()
    minutely_out.close()
    return {"read": read, "valid": hourly_out.events, "duplicates": duplicates, "malformed": malformed, "late": late,
            "windows_written": hourly_out.rows + minutely_out.rows}


def check(out_dir: str, pipeline_data_dir: str, config: str, root: str | None = None) -> bool:
    """The loop's CSVs against the pipeline's `export` of the same rollups
    (`root`: the checkout whose CLI exports; default this one)."""
    import subprocess

    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    same = True
    for rollup in ROLLUPS:
        exported = subprocess.run(
            [sys.executable, os.path.join(root, "run_stream_processing.py"), "export", "--config", config,
             "--data-dir", pipeline_data_dir, "--rollup", rollup],
            cwd=root, check=True, capture_output=True, text=True).stdout
        theirs = _rows(exported.splitlines())
        with open(os.path.join(out_dir, rollup + ".csv"), encoding="utf-8") as f:
            ours = _rows(f.read().splitlines())
        only_ours, only_theirs = ours - theirs, theirs - ours
        total = sum(int(row[2]) for row in ours)
        if only_ours or only_theirs:
            same = False
            print(f"{rollup}: DIFFERENT: {len(only_ours):,} rows only here, {len(only_theirs):,} only in the "
                  f"pipeline's export; e.g. {sorted(only_ours)[:3]} / {sorted(only_theirs)[:3]}")
        else:
            print(f"{rollup}: same {len(ours):,} windows, {total:,} events")
    return same


def _rows(lines: list[str]) -> set[tuple[str, ...]]:
    import csv

    rows = [tuple(row) for row in csv.reader(lines[1:]) if row]
    unique = set(rows)
    if len(unique) != len(rows):
        raise SystemExit("a window appears twice")
    return unique


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("out_dir")
    parser.add_argument("--lateness", type=float, default=600.0, help="seconds (default 600, the pipeline's 10m)")
    parser.add_argument("--check", metavar="PIPELINE_DATA_DIR",
                        help="compare the output with the pipeline's export from this data dir")
    parser.add_argument("--config", default="bench/counts_only.toml", help="the pipeline profile of --check")
    args = parser.parse_args()
    summary = run(args.input, args.out_dir, args.lateness)
    print(json.dumps(summary))
    if args.check and not check(args.out_dir, args.check, args.config):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
