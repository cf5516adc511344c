#!/usr/bin/env python3
"""Generate an `events-csv` file for benchmarks and end-to-end tests.

Seeded; timestamps in mixed ISO forms and UTC offsets (`Z`, `+00`, `+0530`,
`-08:00`, `T` or space, 0-9 fraction digits), mostly in order with a few
minutes of disorder; about 1% of rows are duplicates re-sent later (sometimes
written with another offset), about 0.1% are malformed.

    python bench/generate_events.py --rows 1000000 --out /tmp/events.csv
"""

from __future__ import annotations

import argparse
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
    from streams.timestamps import parse_timestamp

    moment = parse_timestamp(stamp)
    offset = rng.choice(OFFSETS)
    local = moment.astimezone(timezone(offset))
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + f".{local.microsecond:06d}"
    sign = "+" if offset >= timedelta(0) else "-"
    minutes = abs(int(offset.total_seconds())) // 60
    return text + f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", required=True)
    parser.add_argument("--header", action="store_true")
    args = parser.parse_args()
    with open(args.out, "w", encoding="utf-8") as f:
        if args.header:
            f.write("customer_id,event_type,transaction_id,timestamp\n")
        for line in generate(args.rows, args.seed):
            f.write(line + "\n")


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
