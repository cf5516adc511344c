"""Open a transport by URI: `spool:DIR`, `console` (writer only), `mpqueue`.

Usage::

    writer = open_writer("spool:data/spool", max_pending=100_000)
    reader = open_reader("spool:data/spool", group="default")

To add a transport, add one line per side to `WRITERS` / `READERS`, e.g.
`"kinesis": _needs_target(kinesis_writer)`. A factory gets the part after the
first `:` (possibly empty) and the options; the CLI always passes `settings`
(the loaded `config.settings.Settings`) and `create_resources`, which a
factory may use or ignore.
`mpqueue` needs the queue itself: `open_writer("mpqueue", queue=q)`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from producers.console import ConsoleWriter
from producers.mp_queue import MpQueueReader, MpQueueWriter
from producers.spool import SpoolReader, SpoolWriter
from producers.transport import BadTransportUri, TransportReader, TransportWriter

EXPECTED = "expected spool:DIR, console, kinesis:STREAM or sqs:QUEUE"


class _BadTarget(Exception):
    """The scheme is known but the part after `:` is missing or unexpected."""


def _needs_target(factory: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a factory whose target (the DIR, STREAM, ...) must not be empty."""

    def make(target: str, **options: Any) -> Any:
        if not target:
            raise _BadTarget
        return factory(target, **options)

    return make


def _no_target(factory: Callable[..., Any]) -> Callable[..., Any]:
    def make(target: str, **options: Any) -> Any:
        if target:
            raise _BadTarget
        return factory(**options)

    return make


def _local(factory: Callable[..., Any]) -> Callable[..., Any]:
    """Local transports need neither settings nor resource creation."""

    def make(*args: Any, settings: Any = None, create_resources: bool = False, **options: Any) -> Any:
        return factory(*args, **options)

    return make


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """A factory imported on first use, so local mode never imports boto3."""
    return lambda *args, **options: getattr(importlib.import_module(module), name)(*args, **options)


WRITERS: dict[str, Callable[..., TransportWriter]] = {
    "spool": _needs_target(_local(SpoolWriter)),
    "console": _no_target(_local(ConsoleWriter)),
    "mpqueue": _no_target(_local(MpQueueWriter)),
    "kinesis": _needs_target(_lazy("producers.kinesis_writer", "KinesisWriter")),
    "sqs": _needs_target(_lazy("producers.sqs_transport", "SqsWriter")),
}

READERS: dict[str, Callable[..., TransportReader]] = {
    "spool": _needs_target(_local(SpoolReader)),
    "mpqueue": _no_target(_local(MpQueueReader)),
    "kinesis": _needs_target(_lazy("producers.kinesis_reader", "KinesisReader")),
    "sqs": _needs_target(_lazy("producers.sqs_transport", "SqsReader")),
}


def _open(registry: dict[str, Callable[..., Any]], uri: str, options: dict[str, Any]) -> Any:
    scheme, _, target = uri.partition(":")
    factory = registry.get(scheme)
    if factory is None and scheme in WRITERS:
        raise BadTransportUri(f"transport URI {uri!r} is write-only: {EXPECTED}")
    try:
        if factory is None:
            raise _BadTarget
        return factory(target, **options)
    except _BadTarget:
        raise BadTransportUri(f"unknown transport URI {uri!r}: {EXPECTED}") from None


def open_writer(uri: str, **options: Any) -> TransportWriter:
    """The writer for `uri`; `options` go to its constructor."""
    return _open(WRITERS, uri, options)


def open_reader(uri: str, **options: Any) -> TransportReader:
    """The reader for `uri`; `options` go to its constructor."""
    return _open(READERS, uri, options)
