#!/usr/bin/env python3
"""The plain single-loop CPython baseline of the `run` job, written for the
bench: read an events-csv file, parse and validate, normalise timestamps to
UTC, drop late events (watermark = newest event − lateness) and duplicates,
count customer × hour and event type × minute windows, write every window's
count to SQLite and every bad row to a dead-letter file. No Rx, no framework.

    python bench/baseline_loop.py FILE DATA_DIR [LATENESS_SECONDS]
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from datetime import datetime, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
HOUR, MINUTE = 3_600_000_000, 60_000_000


def main(path: str, data_dir: str, lateness_s: float = 600) -> None:
    os.makedirs(data_dir, exist_ok=True)
    lateness = int(lateness_s * 1_000_000)
    watermark = -(1 << 62)
    seen: dict[int, set] = {}
    hourly: dict[tuple[str, int], int] = {}
    minutely: dict[tuple[str, int], int] = {}
    read = valid = dup = bad = late = 0
    dead = open(os.path.join(data_dir, "dead_letters.ndjson"), "w")
    for raw in open(path, "rb"):
        read += 1
        try:
            line = raw.decode().strip()
        except UnicodeDecodeError:
            bad += 1
            dead.write(json.dumps({"reason": "not utf-8", "position": read}) + "\n")
            continue
        if not line:
            continue
        parts = line.split(",")
        if len(parts) != 4 or not all(parts):
            bad += 1
            dead.write(json.dumps({"reason": "malformed", "position": read, "record": line}) + "\n")
            continue
        customer, etype, txn, stamp = parts
        if customer == "customer_id":
            continue
        try:
            moment = datetime.fromisoformat(stamp)
            if moment.tzinfo is None:
                raise ValueError("no UTC offset")
        except ValueError as exc:
            bad += 1
            dead.write(json.dumps({"reason": str(exc), "position": read, "record": line}) + "\n")
            continue
        us = (moment - EPOCH) // _US
        if us < watermark:
            late += 1
            dead.write(json.dumps({"reason": "late", "position": read, "record": line}) + "\n")
            continue
        bucket = us - us % MINUTE
        keys = seen.setdefault(bucket, set())
        key = (customer, etype, txn, us)
        if key in keys:
            dup += 1
            continue
        keys.add(key)
        valid += 1
        hk = (customer, us - us % HOUR)
        hourly[hk] = hourly.get(hk, 0) + 1
        mk = (etype, bucket)
        minutely[mk] = minutely.get(mk, 0) + 1
        if us - lateness > watermark:
            watermark = us - lateness
            # Forget dedup keys that can no longer match (their minute closed).
            if len(seen) > 16:
                for b in [b for b in seen if b + MINUTE <= watermark]:
                    del seen[b]
    dead.close()
    db = sqlite3.connect(os.path.join(data_dir, "baseline.sqlite3"))
    db.execute("CREATE TABLE IF NOT EXISTS counts (rollup TEXT, key TEXT, window_start INTEGER, count INTEGER, "
               "PRIMARY KEY (rollup, key, window_start))")
    with db:
        db.executemany("INSERT OR REPLACE INTO counts VALUES ('customer_hourly', ?, ?, ?)",
                       ((k, w, c) for (k, w), c in hourly.items()))
        db.executemany("INSERT OR REPLACE INTO counts VALUES ('event_type_minutely', ?, ?, ?)",
                       ((k, w, c) for (k, w), c in minutely.items()))
    db.close()
    print(json.dumps({"read": read, "valid": valid, "duplicates": dup, "malformed": bad, "late": late,
                      "windows": len(hourly) + len(minutely)}))


if __name__ == "__main__":
    from datetime import timedelta

    _US = timedelta(microseconds=1)
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 600)
