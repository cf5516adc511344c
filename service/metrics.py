"""Prometheus metrics of the HTTP service, on the default registry that
`/metrics` serves. Labels are route templates, methods, statuses and reasons:
never a user, URL or client address, so cardinality stays bounded."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("rivulet_http_requests_total", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram(
    "rivulet_http_request_seconds",
    "Time to answer an HTTP request",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENTS_ACCEPTED = Counter("rivulet_http_events_accepted_total", "Events the transport accepted", ["route"])
EVENTS_REJECTED = Counter(
    "rivulet_http_events_rejected_total", "Requests to collect events that were refused", ["reason"]
)
EVENTS_DUPLICATE = Counter(
    "rivulet_http_events_duplicate_total", "Events whose event_id the same user had sent before (not sent again)", ["route"]
)
AUTH_FAILURES = Counter("rivulet_http_auth_failures_total", "Failed or refused Basic auth attempts", ["reason"])
TRANSPORT_FULL = Counter("rivulet_http_transport_full_total", "Collector sends refused by a full transport")

METRIC_NAMES = (
    "rivulet_http_requests_total",
    "rivulet_http_request_seconds",
    "rivulet_http_events_accepted_total",
    "rivulet_http_events_rejected_total",
    "rivulet_http_events_duplicate_total",
    "rivulet_http_auth_failures_total",
    "rivulet_http_transport_full_total",
)
