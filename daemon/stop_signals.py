"""How a long-running command stops: SIGTERM/SIGINT stop intake, SIGHUP reloads.

Usage::

    with stop_on_signals(reader.stop, settings, service):
        run_job(...)
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable

from config.settings import Settings
from consumers.retrying_ports import STOP_REQUESTED
from daemon.reload import install_sighup_handler


class stop_on_signals:
    """SIGTERM/SIGINT stop intake; the pipeline then drains, flushes and
    checkpoints every sink and the command exits 0. If that takes longer than
    `pipeline.stop_timeout`, the process exits 1 without a checkpoint: the
    source replays from the last one. SIGHUP reloads (daemon/reload.py)."""

    def __init__(self, stop: Callable[[], None], settings: Settings | None = None, service=None) -> None:
        self.stop = stop
        self.timeout = settings.stop_timeout.total_seconds() if settings else 30.0
        self.service = service
        self.previous: dict[int, object] = {}

    def _on_signal(self, signum: int, frame: object) -> None:
        STOP_REQUESTED.set()
        if self.service is not None:
            self.service.stopping()
        self.stop()
        timer = threading.Timer(self.timeout, self._give_up, args=(signum,))
        timer.daemon = True
        timer.start()

    def _give_up(self, signum: int) -> None:
        logging.getLogger("rivulet").error(
            "did not stop within pipeline.stop_timeout (%ss) after signal %s; exiting without a final checkpoint",
            self.timeout, signum)
        os._exit(1)

    def __enter__(self) -> "stop_on_signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._on_signal)
            self.previous[signal.SIGHUP] = signal.getsignal(signal.SIGHUP)
            install_sighup_handler()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
