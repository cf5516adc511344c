"""Open a transport by URI: `spool:DIR`, `console` (writer only), `mpqueue`.

Usage::

    writer = open_writer("spool:data/spool", max_pending=100_000)
    reader = open_reader("spool:data/spool", group="default")

To add a transport, add one line per side to `WRITERS` / `READERS`, e.g.
`"kinesis": _needs_target(_kinesis_writer)`. A factory gets the part after the
first `:` (possibly empty) and the options; the CLI always passes `settings`
(the loaded `config.settings.Settings`) and `create_resources`. Local
transports ignore both; the AWS ones take the typed `[aws]` settings
(`settings.aws`) and create their own stream or queue on `create_resources`
(the rest of the profile's resources are created by the composition root
first: `config/aws_resources.py`).
`mpqueue` needs the queue itself: `open_writer("mpqueue", queue=q)`.
"""

from __future__ import annotations

from typing import Any, Callable

from aws.settings import AwsConfig
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


# The AWS transports are imported on first use, so local mode never imports boto3.


def _aws_config(settings: Any) -> AwsConfig:
    """The typed `[aws]` settings (`Settings.aws` checks them); the defaults
    when no settings are given."""
    return settings.aws if settings is not None else AwsConfig()


def _kinesis_writer(stream: str, settings: Any = None, create_resources: bool = False) -> TransportWriter:
    from producers.kinesis_writer import KinesisWriter

    return KinesisWriter(stream, _aws_config(settings), create_resources=create_resources)


def _sqs_writer(queue: str, settings: Any = None, create_resources: bool = False) -> TransportWriter:
    from producers.sqs_writer import SqsWriter

    return SqsWriter(queue, _aws_config(settings), create_resources=create_resources)


def _kinesis_reader(stream: str, settings: Any = None, create_resources: bool = False, group: str = "default",
                    batch_size: int = 5000, poll_interval: float = 0.2) -> TransportReader:
    from producers.kinesis_reader import open_kinesis_reader

    return open_kinesis_reader(stream, _aws_config(settings), group=group, batch_size=batch_size,
                               poll_interval=poll_interval, create_resources=create_resources)


def _sqs_reader(queue: str, settings: Any = None, create_resources: bool = False, group: str = "default",
                batch_size: int = 0, poll_interval: float = 0.2) -> TransportReader:
    """A queue is one partition that every reader shares: there are no consumer
    groups, and a receive takes at most 10 messages, so `group` and
    `batch_size` do not apply."""
    from producers.sqs_reader import SqsReader

    return SqsReader(queue, _aws_config(settings), create_resources=create_resources, poll_interval=poll_interval)


WRITERS: dict[str, Callable[..., TransportWriter]] = {
    "spool": _needs_target(_local(SpoolWriter)),
    "console": _no_target(_local(ConsoleWriter)),
    "mpqueue": _no_target(_local(MpQueueWriter)),
    "kinesis": _needs_target(_kinesis_writer),
    "sqs": _needs_target(_sqs_writer),
}

READERS: dict[str, Callable[..., TransportReader]] = {
    "spool": _needs_target(_local(SpoolReader)),
    "mpqueue": _no_target(_local(MpQueueReader)),
    "kinesis": _needs_target(_kinesis_reader),
    "sqs": _needs_target(_sqs_reader),
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
