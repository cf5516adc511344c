"""Optimizely Feature Experimentation for Rivulet (issue 5).

Data flow::

    SDK client ──dispatch_event──▶ BulkEventDispatcher ──NDJSON records──▶ transport
    (activate / track / decide)    (bounded buffer,        (spool, Kinesis, SQS)
                                    background sender)              │
                                                                    ▼
    stream events ──CountedBatch──▶ OptimizelyBulkSink ◀── PayloadForwarder
    (conversions.py maps            (merge visitors, POST, retry,
     event_type → event key)         dead-letter 4xx, ack on 2xx)

Modules: `payload_record` (the transport record), `payload_splitter` and
`event_batcher` (pure splitting and merging), `bulk_event_dispatcher`,
`bulk_sink` (with its parts `event_api_delivery`, `http_poster`,
`pending_positions`, `delivery_stats`), `forwarder`, `conversions`,
`datafile` (the datafile manager), `webhook_signature` (its webhook's HMAC),
`bucketer`, `attributes` (the `k:v` parser), `http_routes` (FastAPI router),
`settings` (the dataclass; `config/optimizely_settings.py` parses it),
`metrics`. See docs/optimizely.md.
"""
