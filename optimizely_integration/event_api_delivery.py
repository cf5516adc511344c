"""Deliver one request body to the Event API: POST it until the server answers
for good, waiting out outages with the project's backoff.

Outcomes of one POST:

- 2xx: done; the answer is returned.
- 5xx, 408, 429, timeout, connection error: retried forever with capped
  exponential backoff and half jitter, never sooner than `Retry-After`; the
  outage is reported to the health model meanwhile.
- any other status (4xx), or an endpoint that is not http(s): done, not
  retried; the answer is returned for the caller to dead-letter.

Only `abort` ends the retrying early (the caller is closing); `deliver` then
returns None and the body's visitors stay unacknowledged.

Usage::

    delivery = EventApiDelivery(Backoff(0.5, 30.0, jitter=0.5), abort=threading.Event(), stats=DeliveryStats())
    answer = delivery.deliver(HttpPoster(10.0, headers), body)   # HttpResponse, or None if aborted
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time

from observability import metrics as pipeline_metrics
from observability.health import HEALTH, PipelineHealth
from optimizely_integration import metrics
from optimizely_integration.delivery_stats import SINK_NAME, DeliveryStats
from optimizely_integration.event_batcher import RequestBody
from optimizely_integration.http_poster import HttpPoster, HttpResponse, UnsupportedEndpoint
from resilience.backoff import Backoff

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429})  # plus every 5xx


def is_success(response: HttpResponse) -> bool:
    return 200 <= response.status < 300


class EventApiDelivery:
    """Shared by the sink's sender threads; each brings its own `HttpPoster`."""

    def __init__(self, backoff: Backoff, abort: threading.Event, stats: DeliveryStats,
                 health: PipelineHealth = HEALTH) -> None:
        self.backoff = backoff
        self.abort = abort
        self.stats = stats
        self.health = health  # told of outages, so readiness and the watchdog see them

    def deliver(self, poster: HttpPoster, body: RequestBody, data: bytes) -> HttpResponse | None:
        """POST `data` (the bytes of `body`) until a final answer, or None on abort."""
        attempt = 0
        while not self.abort.is_set():
            started = time.monotonic()
            try:
                response = poster.post(body.endpoint, data)
            except UnsupportedEndpoint as exc:
                self._failed("4xx", body, str(exc))
                return HttpResponse(0, str(exc).encode(), None)
            except (TimeoutError, socket.timeout) as exc:
                self._failed("timeout", body, f"timeout: {exc}")
                retry_after = None
            except (OSError, http.client.HTTPException) as exc:
                self._failed("connection", body, f"connection error: {exc!r}")
                retry_after = None
            except Exception as exc:  # noqa: BLE001 - keep the sender alive; retry
                log.exception("optimizely sink: unexpected error posting to %s", body.endpoint)
                self._failed("connection", body, f"unexpected error: {exc!r}")
                retry_after = None
            else:
                elapsed = time.monotonic() - started
                metrics.SINK_LATENCY.observe(elapsed)
                pipeline_metrics.SINK_LATENCY.labels(SINK_NAME).observe(elapsed)
                if is_success(response):
                    self.health.recovered(SINK_NAME)
                    return response
                if response.status >= 500 or response.status in RETRYABLE_STATUSES:
                    self._failed("5xx" if response.status >= 500 else "4xx-retryable", body, f"HTTP {response.status}")
                    retry_after = response.retry_after
                else:
                    self._failed("4xx", body, f"HTTP {response.status}")
                    return response
            delay = self.backoff.delay(attempt, retry_after)
            attempt += 1
            self.abort.wait(delay)
        return None

    def _failed(self, kind: str, body: RequestBody, what: str) -> None:
        if kind != "4xx":  # a retried outage, not a rejected visitor
            self.health.failing(SINK_NAME, what)
        self.stats.failed(kind)
        log.warning("optimizely sink: POST of %d visitors to %s failed: %s", len(body.origins), body.endpoint, what)
