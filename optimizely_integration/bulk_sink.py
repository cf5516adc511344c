"""The Optimizely bulk sink: merge visitors into large Event API requests,
POST them, retry what may succeed later, dead-letter what never will, and
acknowledge source positions only after a 2xx.

Inputs (both end in `submit`):

- `write(batch)`: the `Sink` protocol. Accepted stream events whose event
  type is mapped (`ConversionBuilder`) become conversions.
- `write_payload_records(partition, records, positions)`: optimizely payload
  records from a transport (what `BulkEventDispatcher` produced); driven by
  `forwarder.PayloadForwarder`.

Flow: split each payload into visitors (`payload_splitter.split_payload`), merge
compatible visitors in an `EventBatcher` (sealed at `max_visitors`,
`max_body_bytes` or `flush_interval`), hand sealed bodies to a bounded queue,
and let `senders` worker threads POST them (keep-alive `http.client`). So
`write` never waits for the network; only a full queue (a long outage) makes
it wait, which is backpressure, not loss.

Outcomes of one POST (the retrying is `event_api_delivery`'s, the HTTP
`http_poster`'s):

- 2xx: every visitor's source position is acknowledged.
- 5xx, 408, 429, timeout, connection error: retried forever with capped
  exponential backoff and jitter (`Retry-After` honoured); the positions stay
  unacknowledged meanwhile, so the source is not checkpointed past them.
- any other status (4xx): not retried; each visitor of the body is written to
  the dead-letter sink as a replayable payload record, reason `sink rejected`,
  error = status and response text; then acknowledged.

`pending_floor(partition)` is the lowest position taken but not yet
acknowledged (`pending_positions`): `SinkFanOut` and `PayloadForwarder` never commit past it, so a
crash replays (at least once) what was not acknowledged; re-sent events keep
their uuid and the Event API de-duplicates them.

`flush()` only seals bodies whose interval is due (the pipeline calls it every
second; forcing a send there would defeat batching); durability is reported by
`pending_floor`. `drain(timeout)` sends everything and waits; `close()` drains.

Usage::

    sink = OptimizelyBulkSink(dead_letters, endpoint="https://logx.optimizely.com/v1/events")
    sink.write_payload_records("spool:/data", [line], [17])
    sink.pending_floor("spool:/data")   # 17 until the Event API answered 2xx
    sink.close()
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from consumers.ports import DeadLetterSink
from observability.health import HEALTH, PipelineHealth
from optimizely_integration import metrics
from optimizely_integration.conversions import ConversionBuilder
from optimizely_integration.delivery_stats import SINK_NAME, DeliveryStats
from optimizely_integration.event_api_delivery import EventApiDelivery, is_success
from optimizely_integration.event_batcher import EventBatcher, OversizeVisitor, RequestBody
from optimizely_integration.http_poster import HttpPoster, HttpResponse
from optimizely_integration.payload_record import (
    PayloadRecordError,
    decode_payload_record,
    encode_payload_record,
    record_prefix,
)
from optimizely_integration.payload_splitter import Origin, Rejected, split_payload
from optimizely_integration.pending_positions import PendingPositions
from optimizely_integration.settings import DEFAULT_EVENT_ENDPOINT, EU_EVENT_ENDPOINT, OptimizelySettings
from resilience.backoff import Backoff
from streams.batches import CountedBatch
from streams.events import DeadLetter, Reason

log = logging.getLogger(__name__)

MAX_ERROR_TEXT = 2000
_STOP = object()


class OptimizelyBulkSink:
    """See the module docstring."""

    name = SINK_NAME

    def __init__(
        self,
        dead_letters: DeadLetterSink,
        *,
        endpoint: str = DEFAULT_EVENT_ENDPOINT,
        eu_endpoint: str = EU_EVENT_ENDPOINT,
        conversions: ConversionBuilder | None = None,
        max_visitors: int = 1000,
        max_body_bytes: int = 3_000_000,
        flush_interval: float = 10.0,
        senders: int = 2,
        send_queue: int = 8,
        request_timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        null_variation: str = "dead_letter",
        extra_headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        health: PipelineHealth = HEALTH,
    ) -> None:
        self.dead_letters = dead_letters
        self.endpoint = endpoint
        self.eu_endpoint = eu_endpoint
        self.conversions = conversions
        self.null_variation = null_variation
        self.request_timeout = request_timeout
        self.headers = {"Content-Type": "application/json", "User-Agent": "rivulet-optimizely/1", **(extra_headers or {})}
        self.stats = DeliveryStats()
        self._batcher = EventBatcher(max_visitors, max_body_bytes, flush_interval, clock)
        self._batch_lock = threading.Lock()
        self._pending = PendingPositions()
        self._dl_lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=send_queue)
        self._abort = threading.Event()  # stop retrying: close() gave up
        # Half jitter: spreads the retries of many senders but never retries
        # much sooner than the ceiling; a server's Retry-After is a floor.
        backoff = Backoff(backoff_base, backoff_cap, jitter=0.5, rng=rng or random.Random())
        self._delivery = EventApiDelivery(backoff, self._abort, self.stats, health)
        self._closed = False
        self._tick = min(0.5, flush_interval / 4)
        self._threads = [
            threading.Thread(target=self._sender, name=f"optimizely-sender-{i}", daemon=True) for i in range(senders)
        ]
        self._threads.append(threading.Thread(target=self._timer, name="optimizely-batch-timer", daemon=True))
        for thread in self._threads:
            thread.start()

    @classmethod
    def from_settings(
        cls, opt: OptimizelySettings, dead_letters: DeadLetterSink, conversions: ConversionBuilder | None = None
    ) -> "OptimizelyBulkSink":
        return cls(
            dead_letters,
            endpoint=opt.endpoint,
            eu_endpoint=opt.eu_endpoint,
            conversions=conversions,
            max_visitors=opt.max_visitors,
            max_body_bytes=opt.max_body_bytes,
            flush_interval=opt.flush_interval,
            senders=opt.senders,
            send_queue=opt.send_queue,
            request_timeout=opt.request_timeout,
            backoff_base=opt.backoff_base,
            backoff_cap=opt.backoff_cap,
            null_variation=opt.null_variation,
        )

    # -- inputs ----------------------------------------------------------------

    def resolve_endpoint(self, url: str) -> str:
        """Where a payload built for `url` goes: the SDK's default US URL (or
        none) → `endpoint`; its EU URL → `eu_endpoint`; any other URL as is."""
        if not url or url == DEFAULT_EVENT_ENDPOINT:
            return self.endpoint
        if url == EU_EVENT_ENDPOINT:
            return self.eu_endpoint
        return url

    def write(self, batch: CountedBatch) -> None:
        """Sink protocol: mapped stream events become conversions."""
        if self.conversions is None or not self.conversions.enabled or not batch.events:
            return
        built = self.conversions.build(batch.events)
        if built.unknown:
            letters = [
                DeadLetter(Reason.SINK_REJECTED, error, e.partition, e.position, e.to_letter_record())
                for e, error in built.unknown
            ]
            self._write_dead_letters(letters)
            metrics.SINK_REJECTED.labels("unknown event key").inc(len(letters))
        for url, payload, events in built.payloads:
            self.submit(url, payload, [Origin(e.partition, e.position) for e in events])

    def write_payload_records(self, partition: str, records: Sequence[bytes], positions: Sequence[int]) -> None:
        """Optimizely payload records from a transport; bad records are dead-lettered."""
        bad: list[DeadLetter] = []
        for data, position in zip(records, positions):
            try:
                record = decode_payload_record(data)
            except PayloadRecordError as exc:
                bad.append(DeadLetter(Reason.MALFORMED, f"not an optimizely payload record: {exc}", partition, position, bytes(data)))
                continue
            self.submit(record.url, record.payload, Origin(partition, position))
        if bad:
            self._write_dead_letters(bad)
            metrics.SINK_REJECTED.labels(Reason.MALFORMED.value).inc(len(bad))

    def submit(self, url: str, payload: Mapping[str, Any], origins: Origin | Sequence[Origin]) -> None:
        """Take one payload; its visitors are acknowledged per origin."""
        if self._closed:
            raise RuntimeError("the Optimizely sink is closed")
        endpoint = self.resolve_endpoint(url)
        split = split_payload(payload, endpoint, origins, self.null_variation)
        sealed: list[RequestBody] = []
        oversize: list[DeadLetter] = []
        with self._batch_lock:
            for visitor in split.visitors:
                try:
                    sealed.extend(self._batcher.add(split.group, visitor))  # type: ignore[arg-type]
                except OversizeVisitor as exc:
                    record = record_prefix(endpoint) + split.group.prefix + visitor.data + b"]}}"  # type: ignore[union-attr]
                    oversize.append(DeadLetter(Reason.OVERSIZE, str(exc), visitor.origin.partition, visitor.origin.position, record))
                    continue
                self._pending.take(visitor.origin)
        if split.rejected or oversize:
            self._reject(split.rejected, endpoint, oversize)
        self._enqueue(sealed)

    # -- acknowledgement -------------------------------------------------------

    def pending_floor(self, partition: str) -> int | None:
        return self._pending.floor(partition)

    @property
    def outstanding(self) -> int:
        """Visitors taken but not yet acknowledged."""
        return self._pending.visitors

    # -- dead letters ------------------------------------------------------------

    def _write_dead_letters(self, letters: list[DeadLetter]) -> None:
        # Flushed before the positions are acknowledged: a checkpoint past a
        # dead letter that is not yet durable would lose it in a crash.
        with self._dl_lock:
            self.dead_letters.write(letters)
            self.dead_letters.flush()

    def _reject(self, rejected: Sequence[Rejected], endpoint: str, oversize: list[DeadLetter]) -> None:
        letters = list(oversize)
        dropped = 0
        for part in rejected:
            metrics.SINK_REJECTED.labels(part.reason.value if part.dead_letter else "dropped null variation").inc()
            if not part.dead_letter:
                dropped += 1
                continue
            try:
                record = encode_payload_record(endpoint, part.payload)
            except (ValueError, TypeError):  # NaN etc.: keep it readable, if not valid JSON
                record = json.dumps({"v": 1, "kind": "optimizely_payload", "url": endpoint, "payload": part.payload}, default=repr).encode()
            letters.append(DeadLetter(part.reason, part.error, part.origin.partition, part.origin.position, record))
        if letters:
            self._write_dead_letters(letters)
        self.stats.visitors_rejected(len(letters), dropped)
        if oversize:
            metrics.SINK_REJECTED.labels(Reason.OVERSIZE.value).inc(len(oversize))

    # -- sending -----------------------------------------------------------------

    def _enqueue(self, bodies: Sequence[RequestBody], deadline: float | None = None) -> bool:
        """Queue sealed bodies for the senders, waiting while the queue is full
        (backpressure). Gives up at `deadline` or on abort: the bodies' visitors
        then stay unacknowledged (never checkpointed), so they are replayed."""
        for i, body in enumerate(bodies):
            while True:
                try:
                    self._queue.put(body, timeout=0.1)
                    break
                except queue.Full:
                    if self._abort.is_set() or (deadline is not None and time.monotonic() >= deadline):
                        left = sum(len(b.origins) for b in bodies[i:])
                        log.error("optimizely sink: send queue still full; %d visitors stay unacknowledged", left)
                        return False
            metrics.SINK_QUEUE.set(self._queue.qsize())
        return True

    def _timer(self) -> None:
        while not self._abort.wait(self._tick):
            self.flush()

    def _sender(self) -> None:
        poster = HttpPoster(self.request_timeout, self.headers)
        try:
            while True:
                body = self._queue.get()
                metrics.SINK_QUEUE.set(self._queue.qsize())
                if body is _STOP:
                    return
                self._deliver(poster, body)
        finally:
            poster.close()

    def _deliver(self, poster: HttpPoster, body: RequestBody) -> None:
        data = body.body()
        response = self._delivery.deliver(poster, body, data)
        if response is None:
            log.error(
                "optimizely sink stopped retrying %d visitors for %s; their positions stay unacknowledged (replayed after restart)",
                len(body.origins), body.endpoint,
            )
        elif is_success(response):
            self.stats.sent(len(body.origins), body.events, len(data))
            self._pending.ack(body.origins)
        else:
            self._rejected(body, response)

    def _rejected(self, body: RequestBody, response: HttpResponse) -> None:
        text = response.body[:MAX_ERROR_TEXT].decode("utf-8", "replace")
        if response.status:
            error = f"HTTP {response.status} from {body.endpoint}: {text}"
        else:  # never sent (e.g. not an http(s) endpoint)
            error = f"not sent to {body.endpoint}: {text}"
        prefix = record_prefix(body.endpoint)
        letters = [
            DeadLetter(Reason.SINK_REJECTED, error, origin.partition, origin.position, prefix + body.visitor_payload(i) + b"}")
            for i, origin in enumerate(body.origins)
        ]
        self._write_dead_letters(letters)
        self.stats.body_rejected(len(letters))
        metrics.SINK_REJECTED.labels(Reason.SINK_REJECTED.value).inc(len(letters))
        log.error("optimizely sink: %d visitors dead-lettered: %s", len(letters), error[:300])
        self._pending.ack(body.origins)

    # -- lifecycle -----------------------------------------------------------------

    def send(self) -> None:
        """Nothing to start ahead of `flush`, which only hands due bodies to the sender."""

    def flush(self) -> None:
        """Seal bodies whose flush interval is due (non-blocking but for backpressure)."""
        with self._batch_lock:
            due = self._batcher.due()
        self._enqueue(due)

    def drain(self, timeout: float | None = None) -> bool:
        """Send everything taken so far and wait for its acknowledgement."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._batch_lock:
            bodies = self._batcher.drain()
        if not self._enqueue(bodies, deadline):
            return False
        return self._pending.wait_until_empty(deadline)

    def close(self, timeout: float = 30.0) -> None:
        """Drain for up to `timeout` seconds, then stop the threads. The
        dead-letter sink is not closed: its owner closes it."""
        if self._closed:
            return
        self._closed = True
        if not self.drain(timeout):
            log.error(
                "optimizely sink closed with %d visitors unacknowledged; their source positions were not checkpointed",
                self.outstanding,
            )
        self._abort.set()
        # Senders finish their current attempt, skip what is queued, then stop.
        for _ in range(len(self._threads) - 1):
            while True:
                try:
                    self._queue.put(_STOP, timeout=0.1)
                    break
                except queue.Full:
                    continue
        for thread in self._threads:
            thread.join(self.request_timeout + 1.0)
