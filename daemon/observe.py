"""`run --metrics-port N`: Prometheus `/metrics` for a command that does not
run the HTTP service (a long backfill from a file, say)."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from daemon.commands import CliError


@contextlib.contextmanager
def metrics_server(host: str, port: int | None) -> Iterator[str | None]:
    """Serve the default registry on a daemon thread while the block runs;
    yields the URL (None without a port). Port 0 picks a free one."""
    if port is None:
        yield None
        return
    if not 0 <= port <= 65535:
        raise CliError(f"--metrics-port {port}: expected 0-65535")
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise CliError(f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_port}/metrics"
    print(f"metrics: serving on {url}", file=sys.stderr, flush=True)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
