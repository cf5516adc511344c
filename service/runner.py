"""Run the app on uvicorn: in a background thread (inside `consume`, tests,
the benchmark) or in the foreground (`serve`).

The listening socket is bound here, before uvicorn starts, so that port 0
gives a real port the caller can read (`handle.port`) and a busy port fails
at once with one clear line.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Iterator

import uvicorn
from fastapi import FastAPI


START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0


class ServerStartError(RuntimeError):
    """The server could not bind or start (one line)."""


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising a caught SIGTERM/SIGINT after a
    graceful shutdown: `serve` should then exit 0, not die of the signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        import signal

        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServerStartError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ServerStartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: FastAPI, host: str, port: int, **options: Any) -> uvicorn.Config:
    # Our own logging setup stays in charge (log_config=None); access logs
    # would print one line per collected batch, so they are off by default.
    options.setdefault("access_log", False)
    options.setdefault("log_config", None)
    options.setdefault("lifespan", "off")
    return uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=5, **options)


class ServerHandle:
    """A uvicorn server on a background thread."""

    def __init__(self, server: _Server, thread: threading.Thread, sock: socket.socket) -> None:
        self.server = server
        self.thread = thread
        self.socket = sock
        self.host, self.port = sock.getsockname()[:2]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Finish in-flight requests, then stop; idempotent."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)
        with contextlib.suppress(OSError):
            self.socket.close()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_http_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0, **options: Any) -> ServerHandle:
    """Serve `app` on a daemon thread; returns once it accepts connections.

    `options` go to `uvicorn.Config`.
    """
    sock = bind_socket(host, port)
    server = _Server(uvicorn_config(app, host, sock.getsockname()[1], **options))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the starter below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"http-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started:
        if failure or not thread.is_alive():
            sock.close()
            raise ServerStartError(f"http server failed to start: {failure[0] if failure else 'exited'}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise ServerStartError(f"http server did not start within {START_TIMEOUT_SECONDS:.0f} s")
        time.sleep(0.01)
    return ServerHandle(server, thread, sock)


def serve_forever(app: FastAPI, host: str, port: int, announce: Any = None, **options: Any) -> None:
    """Serve in the foreground until SIGINT/SIGTERM, then shut down gracefully.

    `announce(host, port)` is called once the socket is bound (port 0 resolved).
    """
    sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    config = uvicorn_config(app, host, bound_port, **options)
    try:
        config.load()  # reads the TLS certificate: fail before announcing
    except (OSError, ValueError) as exc:
        sock.close()
        raise ServerStartError(f"cannot load the TLS certificate or key: {exc}") from None
    server = _Server(config)
    if announce is not None:
        announce(bound_host, bound_port)
    try:
        server.run(sockets=[sock])
    finally:
        with contextlib.suppress(OSError):
            sock.close()
