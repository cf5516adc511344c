"""What every router needs, built once by `service.app.build_app`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from consumers.ports import CountStore
from producers.transport import TransportWriter
from service.auth import BasicAuth
from service.settings import EventRules, HttpSettings, QueryRules

if TYPE_CHECKING:
    from service.group_commit import Committer


@dataclass
class ServiceContext:
    http: HttpSettings
    events: EventRules  # what the collector holds an event to
    queries: QueryRules  # the rollups and limits of the count routes
    writer: TransportWriter | None  # None: the collector answers 503 (see writer_error)
    store: CountStore
    auth: BasicAuth
    clock_us: Callable[[], int]  # wall clock, UTC epoch microseconds
    writer_error: str = ""
    committer: "Committer | None" = None  # the writer behind group commit and the idempotency ledger
    limits: Any = None  # service.collector.Limits, derived from the settings
