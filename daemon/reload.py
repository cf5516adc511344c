"""SIGHUP: reload what can be reloaded without dropping data.

Components register a callback (log level, Optimizely datafile, HTTP
credentials); the handler runs them on a thread of their own, never inside the
signal handler, and one failing callback does not stop the others.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Callable

log = logging.getLogger(__name__)
_callbacks: dict[str, Callable[[], None]] = {}


def on_reload(name: str, callback: Callable[[], None]) -> None:
    _callbacks[name] = callback


def reload_all() -> dict[str, str]:
    results = {}
    for name, callback in list(_callbacks.items()):
        try:
            callback()
            results[name] = "reloaded"
        except Exception as exc:  # keep running on the old state
            log.error("reload of %s failed, keeping the old one: %s", name, exc)
            results[name] = f"failed: {exc}"
    log.warning("SIGHUP: %s", ", ".join(f"{k} {v}" for k, v in results.items()) or "nothing to reload")
    return results


def install_sighup_handler() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload_all, name="reload", daemon=True).start())
