#!/usr/bin/env python3
"""Generate an `events-csv` file for benchmarks and end-to-end tests.

Two seeded shapes; the same arguments give the same bytes.

* `--shape dense` (`generate`, what the tests use): 2,000 customers, one
  event every 20 ms, timestamps in mixed ISO forms and UTC offsets (`Z`,
  `+00`, `+0530`, `-08:00`, `T` or space, 0-9 fraction digits), up to 4
  minutes out of order; about 1% of rows are duplicates re-sent up to 200
  rows later (half of them written with another offset), about 0.1% malformed.
* `--shape sparse` (`generate_sparse`, the reference workload of the bench):
  10,000 customers with Zipf-skewed activity (weight 1/rank**1.1, ranks
  shuffled over the ids) spread over 30 days from 2021-02-15, so most
  (hour, customer) windows hold one or two events; 15 UTC offsets; 0, 3 or 6
  fraction digits; 5% of rows moved back by up to 599 s (never late under a
  10-minute lateness); about 1% duplicates re-sent from 1 row to about 2 hours
  of rows later (a fifth with the same instant written with another offset,
  so dedup has to compare UTC instants; the ones re-sent more than 10 minutes
  of event time later are late); about 0.1% malformed rows, each rejected both
  by `datetime.fromisoformat` with an offset required and by the timestamp
  contract (README, "Timestamps").

    python bench/generate_events.py --rows 1000000 --out /tmp/events.csv
    python bench/generate_events.py --shape sparse --rows 1000000 --out /tmp/sparse.csv
"""

from __future__ import annotations

import argparse
import heapq
import random
from datetime import datetime, timedelta, timezone

BASE = datetime(2021, 3, 1, tzinfo=timezone.utc)
OFFSETS = [timedelta(0), timedelta(hours=5, minutes=30), timedelta(hours=-8), timedelta(hours=2), timedelta(hours=-3, minutes=-30)]
EVENT_TYPES = ["INGEST", "click", "page_view", "purchase", "signup", "search", "logout", "share"]
MALFORMED = [
    "garbage-without-commas",
    "c1,click,t1,2021-13-45 99:00:00+00",
    "c1,click,t1,2021-03-01 00:00:00",  # no offset
    ",click,t1,2021-03-01 00:00:00+00",
    "c1,click,t1,2021-03-01 00:00:00+00,extra",
    "c1,click,t1,yesterday",
]


def render(moment: datetime, offset: timedelta, rng: random.Random) -> str:
    local = moment.astimezone(timezone(offset))
    digits = rng.choice([0, 1, 2, 3, 3, 3, 6, 6, 9])
    text = local.strftime("%Y-%m-%d") + rng.choice(["T", " "]) + local.strftime("%H:%M:%S")
    if digits:
        fraction = f"{local.microsecond:06d}" + "".join(str(rng.randint(0, 9)) for _ in range(3))
        text += "." + fraction[:digits]
    if offset == timedelta(0):
        return text + rng.choice(["Z", "+00", "+00:00", "+0000"])
    sign = "+" if offset >= timedelta(0) else "-"
    minutes = abs(int(offset.total_seconds())) // 60
    hh, mm = divmod(minutes, 60)
    return text + sign + rng.choice([f"{hh:02d}:{mm:02d}", f"{hh:02d}{mm:02d}"] + ([f"{hh:02d}"] if mm == 0 else []))


def generate(rows: int, seed: int = 7, customers: int = 2000, step_ms: int = 20, disorder_s: int = 240):
    """Yield CSV lines (without newline)."""
    rng = random.Random(seed)
    pending: list[tuple[int, str]] = []  # (emit at row, line): duplicates re-sent later
    for i in range(rows):
        if pending and pending[0][0] <= i:
            yield pending.pop(0)[1]
            continue
        if rng.random() < 0.001:
            yield rng.choice(MALFORMED)
            continue
        moment = BASE + timedelta(milliseconds=i * step_ms + rng.randint(0, 999), seconds=-rng.randint(0, disorder_s))
        # Keep microsecond precision only as far as the rendered digits allow.
        customer = f"{rng.getrandbits(48) % customers:012x}"
        txn = f"{rng.getrandbits(64):016x}"
        etype = rng.choice(EVENT_TYPES)
        line = f"{customer},{etype},{txn},{render(moment, rng.choice(OFFSETS), rng)}"
        yield line
        if rng.random() < 0.01:
            resend = line if rng.random() < 0.5 else f"{customer},{etype},{txn},{render_same_instant(line, rng)}"
            pending.append((i + rng.randint(1, 200), resend))


def render_same_instant(line: str, rng: random.Random) -> str:
    """The same instant, written with another offset."""
    stamp = line.rsplit(",", 1)[1]
    # Every dense stamp is in a form fromisoformat reads; it truncates the
    # fraction to microseconds, as the timestamp contract does.
    moment = datetime.fromisoformat(stamp)
    offset = rng.choice(OFFSETS)
    local = moment.astimezone(timezone(offset))
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + f".{local.microsecond:06d}"
    sign = "+" if offset >= timedelta(0) else "-"
    minutes = abs(int(offset.total_seconds())) // 60
    return text + f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


# --- sparse: the reference workload -----------------------------------------

SPARSE_START_US = int(datetime(2021, 2, 15, tzinfo=timezone.utc).timestamp()) * 1_000_000
SPARSE_DAYS = 30
SPARSE_EVENT_TYPES = ["view", "click", "add_to_cart", "purchase", "login"]
SPARSE_EVENT_WEIGHTS = [50, 25, 12, 5, 8]
# 15 UTC offsets as written (several spellings of UTC), minutes east, weight.
SPARSE_OFFSETS = [
    ("Z", 0, 20), ("+00:00", 0, 20), ("-00:00", 0, 1), ("+01:00", 60, 8), ("+05:30", 330, 8),
    ("+05:45", 345, 3), ("+09:00", 540, 6), ("+10:00", 600, 5), ("+13:00", 780, 2), ("+14:00", 840, 1),
    ("-03:30", -210, 3), ("-05:00", -300, 10), ("-08:00", -480, 8), ("-09:30", -570, 1), ("-11:00", -660, 2),
]
SPARSE_DIGITS = [0, 3, 6]
SPARSE_DIGIT_WEIGHTS = [30, 30, 40]
MAX_BACK_US = 599_000_000  # even truncated to whole seconds, less than 600 s behind the newest row
_DAY_US, _HOUR_US, _MINUTE_US, _SECOND_US = 86_400_000_000, 3_600_000_000, 60_000_000, 1_000_000
_TWO = [f"{i:02d}" for i in range(100)]
_GARBAGE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#@!$%^&*;:-_=+/?<>[]{}()|~."
_BLOCK = 4096  # weighted draws are made this many at a time (random.choices)


class _SparseStamps:
    """Renders UTC epoch microseconds as local ISO text with one of the offsets."""

    def __init__(self) -> None:
        self._dates: dict[int, str] = {}

    def render(self, us: int, digits: int, offset_index: int) -> str:
        suffix, minutes, _ = SPARSE_OFFSETS[offset_index]
        day, rest = divmod(us + minutes * _MINUTE_US, _DAY_US)
        date = self._dates.get(day)
        if date is None:
            date = self._dates[day] = (datetime(1970, 1, 1) + timedelta(days=day)).strftime("%Y-%m-%dT")
        hour, rest = divmod(rest, _HOUR_US)
        minute, rest = divmod(rest, _MINUTE_US)
        second, micros = divmod(rest, _SECOND_US)
        text = date + _TWO[hour] + ":" + _TWO[minute] + ":" + _TWO[second]
        if digits == 3:
            text += f".{micros // 1000:03d}"
        elif digits == 6:
            text += f".{micros:06d}"
        return text + suffix


def _malformed(rng: random.Random, stamps: _SparseStamps, customer: str, etype: str, txn: str, us: int) -> str:
    """A row that both `fromisoformat` (offset required) and the contract reject."""
    kind = rng.random()
    good = stamps.render(us - us % _SECOND_US, 0, 0)  # YYYY-MM-DDTHH:MM:SSZ
    date, time_ = good[:10], good[11:19]
    if kind < 0.4:  # a bad timestamp
        stamp = rng.choice([
            "", "n/a", "yesterday", str(us // _SECOND_US),              # not a timestamp at all
            date[:4] + "-02-30T" + time_ + "+00:00",                     # no such day
            date[:5] + "13" + date[7:] + "T" + time_ + "Z",              # no such month
            date + "T25" + time_[2:] + "Z",                              # no such hour
            date + "T" + time_[:3] + "61" + time_[5:] + "-05:00",        # no such minute
            date + "T" + time_,                                          # no offset
            date + " " + time_ + ".250",                                 # no offset
            date + "T" + time_ + "+5:30",                                # one-digit offset hour
            date + "T" + time_ + ".12.5Z",                               # two fractions
            f"{date[5:7]}/{date[8:10]}/{date[:4]} {time_}",              # not ISO
        ])
        return f"{customer},{etype},{txn},{stamp}"
    fields = [customer, etype, txn, stamps.render(us, 3, 1)]
    if kind < 0.6:  # a field missing
        del fields[rng.randrange(4)]
        return ",".join(fields)
    if kind < 0.7:  # a field empty
        fields[rng.randrange(4)] = ""
        return ",".join(fields)
    if kind < 0.8:  # a field too many
        return ",".join(fields) + ",extra"
    # garbage: no commas, quotes or blanks, so one field whatever it says
    return "".join(rng.choice(_GARBAGE) for _ in range(rng.randint(5, 60)))


def generate_sparse(rows: int, seed: int = 42, customers: int = 10_000, zipf_s: float = 1.1, days: int = SPARSE_DAYS,
                    dup_rate: float = 0.01, rerender: float = 0.2, back_rate: float = 0.05,
                    malformed_rate: float = 0.001):
    """Yield `rows` CSV lines (without newline) of the sparse workload.

    New events are spread evenly over `days` (one per `days`/`rows`, at a
    random point of its slot), so a larger file is denser, not longer.
    """
    rng = random.Random(seed)
    random_ = rng.random
    stamps = _SparseStamps()
    ids = [f"c{i:05d}" for i in range(customers)]
    rng.shuffle(ids)  # the busiest customer is not c00000
    cum, total = [], 0.0
    for rank in range(1, customers + 1):
        total += rank ** -zipf_s
        cum.append(total)
    type_cum = list(_cumulative(SPARSE_EVENT_WEIGHTS))
    offset_cum = list(_cumulative(w for _, _, w in SPARSE_OFFSETS))
    digit_cum = list(_cumulative(SPARSE_DIGIT_WEIGHTS))
    offset_indexes = range(len(SPARSE_OFFSETS))
    slot_us = days * _DAY_US / max(rows, 1)
    two_hours_of_rows = max(1, round(rows / (days * 24) * 2))
    pending: list[tuple[int, int, str]] = []  # heap of (row due, sequence, line): re-sends
    sent = 0
    event = 0
    block_at = _BLOCK
    for row in range(rows):
        if pending and pending[0][0] <= row:
            yield heapq.heappop(pending)[2]
            continue
        if block_at == _BLOCK:
            block_at = 0
            block = list(zip(rng.choices(ids, cum_weights=cum, k=_BLOCK),
                             rng.choices(SPARSE_EVENT_TYPES, cum_weights=type_cum, k=_BLOCK),
                             rng.choices(offset_indexes, cum_weights=offset_cum, k=_BLOCK),
                             rng.choices(SPARSE_DIGITS, cum_weights=digit_cum, k=_BLOCK)))
        customer, etype, offset_index, digits = block[block_at]
        block_at += 1
        us = SPARSE_START_US + int((event + random_()) * slot_us)
        if random_() < back_rate:
            us -= rng.randrange(MAX_BACK_US)
        us -= us % (_SECOND_US if digits == 0 else 1000 if digits == 3 else 1)  # only what the text shows
        txn = f"{(event * 0x5DEECE66D + seed) % (1 << 48):012x}"  # odd multiplier: unique per event
        event += 1
        if random_() < malformed_rate:
            yield _malformed(rng, stamps, customer, etype, txn, us)
            continue
        head = f"{customer},{etype},{txn},"
        line = head + stamps.render(us, digits, offset_index)
        yield line
        if random_() < dup_rate:
            if random_() < rerender:
                other = (offset_index + rng.randrange(1, len(SPARSE_OFFSETS))) % len(SPARSE_OFFSETS)
                resend = head + stamps.render(us, digits, other)
            else:
                resend = line
            sent += 1
            heapq.heappush(pending, (row + 1 + rng.randrange(two_hours_of_rows), sent, resend))


def _cumulative(weights):
    total = 0
    for weight in weights:
        total += weight
        yield total


HEADER = "customer_id,event_type,transaction_id,timestamp"


def write_events(path: str, rows: int, shape: str = "dense", seed: int | None = None, header: bool = False) -> None:
    """Write a workload file (newline-terminated lines)."""
    if shape == "sparse":
        lines = generate_sparse(rows, 42 if seed is None else seed)
    else:
        lines = generate(rows, 7 if seed is None else seed)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        if header:
            f.write(HEADER + "\n")
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) == 65536:
                chunk.append("")
                f.write("\n".join(chunk))
                chunk = []
        if chunk:
            chunk.append("")
            f.write("\n".join(chunk))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["dense", "sparse"], default="dense")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=None, help="default 7 (dense) or 42 (sparse)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--header", action="store_true")
    args = parser.parse_args()
    write_events(args.out, args.rows, args.shape, args.seed, args.header)


if __name__ == "__main__":
    main()
