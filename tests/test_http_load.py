"""A short, bounded load test: concurrent clients post batches to the
collector on a spool for a few seconds (new events, resends, and the same
event_ids raced from several clients at once); then `consume --drain` must
count exactly what the collector answered "Received" for. Zero loss, nothing
twice, no 5xx, under concurrency and group commit."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.test_http_idempotency import total
from tests.test_http_support import drain_spool, running_service

pytestmark = pytest.mark.timeout(180)

CLIENTS = 12
SECONDS = 3.0


def test_zero_loss_under_concurrent_load(tmp_path: Path) -> None:
    deadline = time.monotonic() + SECONDS
    lock = threading.Lock()
    stats = {"accepted": 0, "duplicates": 0, "requests": 0}
    raced = [f"race-{i}" for i in range(400)]  # every client sends these too

    def client(number: int) -> None:
        rng = random.Random(number)
        http = svc.client("ethan" if number % 3 else "mia")
        sent: list[str] = []
        counter = 0
        while time.monotonic() < deadline:
            batch = []
            for _ in range(rng.randint(1, 60)):
                roll = rng.random()
                event: dict[str, object] = {"event_type": rng.choice(["view", "click"]), "n": counter}
                if roll < 0.3:
                    counter += 1
                    event["event_id"] = f"c{number}-{counter}"
                    sent.append(str(event["event_id"]))
                elif roll < 0.4 and sent:
                    event["event_id"] = rng.choice(sent)  # a retry
                elif roll < 0.5:
                    event["event_id"] = rng.choice(raced)  # raced by every client
                batch.append(event)
            r = http.post("/events", json=batch)
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["accepted"] + answer.get("duplicates", 0) == len(batch)
            with lock:
                stats["accepted"] += answer["accepted"]
                stats["duplicates"] += answer.get("duplicates", 0)
                stats["requests"] += 1

    with running_service(tmp_path) as svc:
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(client, range(CLIENTS)))
        drain_spool(svc.data_dir)
    assert stats["requests"] > 50 and stats["duplicates"] > 0
    assert total(svc.data_dir) + total(svc.data_dir, "mia") == stats["accepted"]
