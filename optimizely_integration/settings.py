"""The integration's settings as a typed dataclass, with its defaults.

`config.optimizely_settings` parses and checks the `[optimizely]` config
section (environment overrides included) into one; the integration itself
never reads configuration.

Usage::

    opt = OptimizelySettings(max_visitors=500, null_variation="drop")
    opt.endpoint                          # DEFAULT_EVENT_ENDPOINT
    opt.webhook_secret()                  # from $OPTIMIZELY_WEBHOOK_SECRET, "" when unset
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

DEFAULT_EVENT_ENDPOINT = "https://logx.optimizely.com/v1/events"
EU_EVENT_ENDPOINT = "https://eu.logx.optimizely.com/v1/events"
DEFAULT_DATAFILE_URL_TEMPLATE = "https://cdn.optimizely.com/datafiles/{sdk_key}.json"


@dataclass(frozen=True)
class OptimizelySettings:
    datafile: str = ""  # a path or an http(s) URL; "" = use sdk_key (or no datafile)
    sdk_key: str = ""
    datafile_url_template: str = DEFAULT_DATAFILE_URL_TEMPLATE
    datafile_refresh_interval: float = 300.0
    datafile_fetch_timeout: float = 10.0
    endpoint: str = DEFAULT_EVENT_ENDPOINT  # where US (default-region) payloads go
    eu_endpoint: str = EU_EVENT_ENDPOINT  # where payloads built for "region": "EU" go
    max_visitors: int = 1000  # visitors per request body
    max_body_bytes: int = 3_000_000  # Optimizely documents 3.5 MB; keep a margin
    flush_interval: float = 10.0  # seconds an open request body may wait
    request_timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    senders: int = 2  # worker threads, each with one keep-alive connection
    send_queue: int = 8  # sealed bodies waiting for a sender (backpressure beyond)
    null_variation: str = "dead_letter"  # dead_letter | drop | send (see docs/optimizely.md)
    dispatch_to: str = ""  # transport of the SDK's payloads; "" = spool:<data_dir>/optimizely-spool
    dispatcher_buffer: int = 10_000
    conversions: Mapping[str, str] = field(default_factory=dict)  # event_type -> datafile event key
    conversion_tag_properties: tuple[str, ...] = ()
    webhook_secret_env: str = "OPTIMIZELY_WEBHOOK_SECRET"
    bucketer_public: bool = False
    bucketer_activate: bool = True  # the HTTP bucketer sends an impression per call

    def dispatch_uri(self, data_dir: Path) -> str:
        """`dispatch_to`, or the default spool under the pipeline's data_dir."""
        return self.dispatch_to or f"spool:{data_dir / 'optimizely-spool'}"

    def webhook_secret(self, environ: Mapping[str, str] | None = None) -> str:
        """The webhook HMAC secret, "" when unset (the webhook route is then disabled)."""
        environ = os.environ if environ is None else environ
        return environ.get(self.webhook_secret_env, "") if self.webhook_secret_env else ""
