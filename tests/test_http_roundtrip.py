"""Collector -> spool -> `consume --drain` -> count store -> query routes, with
the expected counts computed independently here; and hostile values that end
up in object keys."""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from consumers.object_keys import check_key
from tests.test_http_support import Clock, drain_spool, run_cli, running_service

pytestmark = pytest.mark.timeout(90)

START = datetime(2021, 3, 1, tzinfo=timezone.utc)
URLS = ["http://something.com", "https://例え.jp/パス", "http://x.org/?a=1&b=2"]
BUTTONS = ["ABC", "buy-now", "ß"]


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_collected_events_are_counted_and_queryable(tmp_path: Path) -> None:
    rng = random.Random(3)
    expected_hours: Counter[tuple[str, str]] = Counter()
    expected_urls: Counter[tuple[str, str]] = Counter()
    expected_buttons: Counter[tuple[str, str]] = Counter()
    # The collector's clock follows the events; a batch spans up to 3.3 h.
    clock = Clock(iso(START))
    with running_service(tmp_path, clock_us=clock, pipeline={"lateness": '"4h"'}) as svc:
        clients = {"ethan": svc.client("ethan"), "mia": svc.client("mia")}
        when = START
        for _ in range(40):  # time moves forward: nothing is late
            user = rng.choice(list(clients))
            batch = []
            for _ in range(rng.randint(1, 20)):
                when += timedelta(seconds=rng.randint(1, 600))
                kind = rng.choice(["page_view", "button_click", "other"])
                event = {"event_type": kind, "timestamp": iso(when)}
                if kind == "page_view":
                    event["url"] = rng.choice(URLS)
                    expected_urls[user, event["url"]] += 1
                elif kind == "button_click":
                    event["button_id"] = rng.choice(BUTTONS)
                    expected_buttons[user, event["button_id"]] += 1
                expected_hours[user, iso(when.replace(minute=0, second=0, microsecond=0))] += 1
                batch.append(event)
            clock.set(iso(when))
            r = clients[user].post("/events", json=batch)
            assert r.json()["accepted"] == len(batch)
        # The seed routes and an event_id resent (counted once).
        when += timedelta(minutes=1)
        clock.set(iso(when))
        view = {"url": URLS[0], "session_id": "s", "timestamp": iso(when), "event_id": "once"}
        for _ in range(2):
            assert clients["ethan"].post("/web/page_view", json=view).status_code == 200
        click = {"button_id": "ABC", "session_id": "s", "timestamp": iso(when)}
        assert clients["ethan"].post("/button/click", json=click).status_code == 200
        expected_urls["ethan", URLS[0]] += 1
        expected_buttons["ethan", "ABC"] += 1
        expected_hours["ethan", iso(when.replace(minute=0, second=0, microsecond=0))] += 2

        drain_spool(svc.data_dir)

        for (user, url), count in expected_urls.items():
            assert clients[user].get("/web/page_view/count", params={"url": url}).json() == {"count": count}
        for (user, button), count in expected_buttons.items():
            assert clients[user].get("/button/click/count", params={"button_id": button}).json() == {"count": count}
        assert clients["ethan"].get("/web/page_view/count", params={"url": "never"}).json() == {"count": 0}

        for user, client in clients.items():
            want = {
                "customer_id": user,
                "buckets": [{"ts_start_of_hour": hour, "count": n} for (u, hour), n in sorted(expected_hours.items()) if u == user],
            }
            span = {"start": "2021-03-01T00:00:00Z", "end": iso(when + timedelta(hours=1))}
            by_query = client.get(f"/events/customers/{user}/buckets", params=span)
            assert by_query.status_code == 200 and by_query.json() == want
            by_body = client.request("GET", f"/events/customers/{user}/buckets", json={"customer_id": user, **span})
            assert by_body.json() == want
            if user == "ethan":  # the same answer as `query buckets`
                cli = run_cli(["query", "buckets", "--customer", user, "--start", span["start"], "--end", span["end"]], svc.data_dir)
                assert json.loads(cli.stdout) == want


HOSTILE = ["../../etc", "..", "/abs/path", "a\\..\\b", "%2e%2e%2fetc", ".", "~", "x" * 120, "évènement/../../x"]


def test_hostile_values_stay_inside_the_store(tmp_path: Path) -> None:
    with running_service(tmp_path, clock_us=Clock("2021-03-01T00:10:00Z"), pipeline={"lateness": '"1h"'}) as svc:
        client = svc.client("ethan")
        events = [
            {"event_type": name, "timestamp": f"2021-03-01T00:0{i}:00Z", "url": "../../../../tmp/pwned", "event_id": f"../../id{i}"}
            for i, name in enumerate(HOSTILE)
        ]
        assert client.post("/events", json=events).json()["accepted"] == len(HOSTILE)  # accepted as data
        drain_spool(svc.data_dir)

    store = svc.settings.store_dir.resolve()
    data = svc.data_dir.resolve()
    for root, dirs, files in os.walk(tmp_path):
        for name in files + dirs:
            path = (Path(root) / name).resolve()
            if path == data:
                continue
            assert data in path.parents, f"written outside the data dir: {path}"
            relative = path.relative_to(data)
            # Top-level entries are the daemon's own (store, spool, counts, ledgers ...), never event values.
            assert not any(part.startswith(("..", "%2e", "évènement", "~", "a\\")) for part in relative.parts), relative
            assert name not in ("etc", "pwned", "abs")
    keys = [p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()]
    raw = [k for k in keys if k.startswith("events/")]
    assert raw and all(check_key(k) == k for k in keys)
    # No event value is part of a raw-event key: the layout is fixed.
    assert all(re.fullmatch(r"events/dt=\d{4}-\d\d-\d\d/hour=\d{1,2}/part-[A-Za-z0-9._%~-]+-\d{12}\.parquet", k) for k in raw)
    # The values themselves survive, unchanged, inside the objects.
    stored = {t for k in raw for t in pl.read_parquet(store / k)["event_type"]}
    assert stored == set(HOSTILE)
