"""What every router needs, built once by `service.app.build_app`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from config.settings import Settings
from consumers.ports import CountStore
from producers.transport import TransportWriter
from service.auth import BasicAuth
from service.settings import HttpSettings


@dataclass
class ServiceContext:
    settings: Settings
    http: HttpSettings
    writer: TransportWriter | None  # None: the collector answers 503 (see writer_error)
    store: CountStore
    auth: BasicAuth
    clock_us: Callable[[], int]  # wall clock, UTC epoch microseconds
    writer_error: str = ""
