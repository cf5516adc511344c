"""What a long-running command does besides the pipeline: tell systemd it is
ready, ping the watchdog while healthy, publish a STATUS line, say STOPPING."""

from __future__ import annotations

import logging
import threading

from observability.health import HEALTH, PipelineHealth
from daemon.sd_notify import SystemdNotifier

log = logging.getLogger(__name__)


class ServiceLoop:
    """`with ServiceLoop(name) as service:` around a daemon's main work.

    READY=1 is sent by `ready()` (once sources and sinks are up). A thread
    sends WATCHDOG=1 at half `WATCHDOG_USEC` only while `health` is healthy, so
    a stalled or failing pipeline is restarted by systemd, and STATUS= with the
    rate. `stopping()` sends STOPPING=1.
    """

    def __init__(self, name: str, notifier: SystemdNotifier | None = None, health: PipelineHealth = HEALTH,
                 status_interval: float = 5.0) -> None:
        self.name = name
        self.notifier = notifier or SystemdNotifier.from_environment()
        self.health = health
        self.status_interval = status_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping_sent = False

    def __enter__(self) -> "ServiceLoop":
        if self.notifier.enabled:
            self._thread = threading.Thread(target=self._run, name="sd-notify", daemon=True)
            self._thread.start()
        return self

    def ready(self, detail: str = "") -> None:
        self.notifier.send("READY=1", f"STATUS={self.name}: ready {detail}".rstrip())

    def stopping(self) -> None:
        if not self._stopping_sent:
            self._stopping_sent = True
            self.notifier.send("STOPPING=1", f"STATUS={self.name}: stopping")

    def _run(self) -> None:
        interval = self.notifier.watchdog_interval
        tick = min(interval or self.status_interval, self.status_interval)
        since_status = 0.0
        while not self._stop.wait(tick):
            problems = self.health.problems()
            if interval and not problems:
                self.notifier.send("WATCHDOG=1")
            since_status += tick
            if since_status >= self.status_interval:
                since_status = 0.0
                state = "degraded: " + "; ".join(f"{k} {v}" for k, v in problems.items()) if problems else "healthy"
                self.notifier.send(f"STATUS={self.name}: {self.health.events:,} events, {self.health.rate():,.0f}/s, {state}")

    def __exit__(self, *exc: object) -> None:
        self.stopping()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
