"""The sd_notify protocol: datagrams to `$NOTIFY_SOCKET` (no libsystemd).

    notifier = SystemdNotifier.from_environment()
    notifier.send("READY=1", "STATUS=consuming spool:data/spool")

Without `NOTIFY_SOCKET` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        if address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            if address.startswith("@"):  # an abstract socket
                self.address = "\0" + address[1:]

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> "SystemdNotifier":
        env = os.environ if environ is None else environ
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process the watchdog is for; children skip it.
        watchdog = int(usec) if usec and usec.isdigit() and (not pid or pid == str(os.getpid())) else None
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    @property
    def watchdog_interval(self) -> float | None:
        """How often to send WATCHDOG=1: half the configured timeout."""
        return self.watchdog_usec / 2_000_000 if self.watchdog_usec else None

    def send(self, *fields: str) -> bool:
        if self._socket is None or self.address is None:
            return False
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:  # systemd gone or socket full: never fatal
            log.warning("sd_notify failed: %s", exc)
            return False

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
