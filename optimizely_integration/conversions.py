"""Stream events as Optimizely conversions (opt-in).

Config::

    [optimizely.conversions]
    purchase = "purchase"        # event_type = "datafile event key"

An accepted stream event whose `event_type` is mapped becomes a conversion of
user `customer_id`, built with the SDK's own `UserEventFactory` and
`EventFactory` (so the shape is exactly what `track` sends: entity_id = the
datafile event id, key, uuid, timestamp, tags), except that:

- `uuid` = uuid5(CONVERSION_NAMESPACE, repr(event.dedup_key)): deterministic,
  so a replay after a crash re-sends the same uuid and the Event API
  de-duplicates it;
- `timestamp` = the event's own time in epoch milliseconds, not the wall clock.

Listed `tag_properties` are copied from the event's properties into the
conversion's tags (`revenue` as an int and `value` as a number also fill the
Event API's revenue/value fields, as with `track`).

Usage::

    builder = ConversionBuilder({"purchase": "purchase"}, datafile_manager.project_config)
    built = builder.build(counted_batch.events)
    built.payloads   # [(url, params, [event per visitor])]
    built.unknown    # [(event, error)]: mapped key missing from the datafile
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from optimizely.event.event_factory import EventFactory
from optimizely.event.user_event_factory import UserEventFactory

from streams.events import Event

log = logging.getLogger(__name__)

# Fixed forever: changing it would change every conversion uuid and defeat
# de-duplication of replays across versions.
CONVERSION_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "rivulet:optimizely:conversion")


def conversion_uuid(dedup_key: tuple[str, str, str, int]) -> str:
    """The conversion uuid of a stream event: uuid5 of its dedup key's repr."""
    return str(uuid.uuid5(CONVERSION_NAMESPACE, repr(dedup_key)))


class _SdkLogger:
    """The SDK's logger interface, onto this module's logger."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return getattr(log, name)


@dataclass
class BuiltConversions:
    payloads: list[tuple[str, dict[str, Any], list[Event]]] = field(default_factory=list)
    unknown: list[tuple[Event, str]] = field(default_factory=list)


class ConversionBuilder:
    """Turns mapped stream events into SDK-shaped conversion payloads."""

    def __init__(
        self,
        event_keys: Mapping[str, str],
        project_config: Callable[[], Any],
        tag_properties: Sequence[str] = (),
    ) -> None:
        """`project_config()` returns the current `ProjectConfig` (e.g.
        `DatafileManager.project_config`), so a datafile refresh applies at once."""
        self.event_keys = dict(event_keys)
        self.project_config = project_config
        self.tag_properties = tuple(tag_properties)
        self._logger = _SdkLogger()

    @property
    def enabled(self) -> bool:
        return bool(self.event_keys)

    def _tags(self, event: Event) -> dict[str, Any] | None:
        if not self.tag_properties:
            return None
        tags = {
            name: event.properties[name]
            for name in self.tag_properties
            if name in event.properties and isinstance(event.properties[name], (str, int, float, bool))
        }
        return tags or None

    def build(self, events: Sequence[Event]) -> BuiltConversions:
        out = BuiltConversions()
        mapped = [e for e in events if e.event_type in self.event_keys]
        if not mapped:
            return out
        config = self.project_config()
        if config is None:
            raise RuntimeError("no Optimizely datafile loaded: cannot build conversions")
        user_events = []
        kept: list[Event] = []
        for event in mapped:
            key = self.event_keys[event.event_type]
            if key not in config.event_key_map:
                out.unknown.append((event, f"event key {key!r} is not in datafile revision {config.revision}"))
                continue
            user_event = UserEventFactory.create_conversion_event(config, key, event.customer_id, None, self._tags(event))
            if user_event is None:  # defensive: the SDK returns None only for bad input
                out.unknown.append((event, f"the SDK could not build a conversion for {key!r}"))
                continue
            user_event.uuid = conversion_uuid(event.dedup_key)
            user_event.timestamp = event.event_time_us // 1000
            user_events.append(user_event)
            kept.append(event)
        if not user_events:
            return out
        # One create_log_event call for the whole list: its JSON round-trip is
        # per call. Every event shares this batch's datafile, so the header the
        # SDK takes from the first event is right for all of them.
        log_event = EventFactory.create_log_event(user_events, self._logger)
        if log_event is None or len(log_event.params.get("visitors", ())) != len(kept):
            raise RuntimeError("the SDK built an unexpected number of conversion visitors")
        out.payloads.append((log_event.url, log_event.params, kept))
        return out
