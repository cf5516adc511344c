"""Open a transport by URI: `spool:DIR`, `console` (writer only), `mpqueue`,
`kinesis:STREAM`, `sqs:QUEUE`. Part of the composition root: the one place
that maps a scheme to its adapter.

Usage::

    writer = open_writer("spool:data/spool", settings)
    reader = open_reader("kinesis:events", settings, group="default", create_resources=True)
    writer = open_writer("mpqueue", queue=q)          # the adapter's own arguments, by name

Each scheme has one builder per side that calls its adapter's constructor
with explicit arguments: the reader's batch size and idle poll interval
come from `settings` (`[pipeline] batch_size`, `idle_poll_interval`), and
the AWS adapters get the typed `[aws]` settings (`settings.aws`) and
`create_resources` (their own stream or queue; the rest of the profile's
resources are created by the root first: config/aws_resources.py); a local
adapter takes neither. Further keyword arguments are the adapter's own constructor
parameters (tests pass `poll_interval=`, `max_pending=`, `stream=`): an
unknown one is a `TypeError` from that constructor, never silently dropped.

The AWS adapters are imported on first use, so local mode never imports
boto3. To add a transport, add its builders to `WRITERS` / `READERS`.
"""

from __future__ import annotations

from typing import Any, Callable

from aws.settings import AwsConfig
from config.settings import Settings
from producers.console import ConsoleWriter
from producers.mp_queue import MpQueueReader, MpQueueWriter
from producers.spool import SpoolReader, SpoolWriter
from producers.transport import BadTransportUri, TransportReader, TransportWriter

EXPECTED = "expected spool:DIR, console, kinesis:STREAM or sqs:QUEUE"


def _aws_config(settings: Settings | None) -> AwsConfig:
    """The typed `[aws]` settings (`Settings.aws` checks them); the defaults
    when no settings are given."""
    return settings.aws if settings is not None else AwsConfig()


def _reader_defaults(settings: Settings | None, adapter_args: dict[str, Any]) -> dict[str, Any]:
    """Batch size and idle poll interval from `[pipeline]`, unless given."""
    if settings is None:
        return adapter_args
    return {"batch_size": settings.batch_size, "poll_interval": settings.idle_poll_interval, **adapter_args}


# -- writers: (target, settings, create_resources, adapter arguments) -> writer ---------


def _spool_writer(target: str, settings: Settings | None, create_resources: bool, **adapter_args: Any) -> TransportWriter:
    return SpoolWriter(target, **adapter_args)


def _console_writer(target: str, settings: Settings | None, create_resources: bool, **adapter_args: Any) -> TransportWriter:
    return ConsoleWriter(**adapter_args)


def _mpqueue_writer(target: str, settings: Settings | None, create_resources: bool, **adapter_args: Any) -> TransportWriter:
    return MpQueueWriter(**adapter_args)


def _kinesis_writer(target: str, settings: Settings | None, create_resources: bool, **adapter_args: Any) -> TransportWriter:
    from producers.kinesis_writer import KinesisWriter

    return KinesisWriter(target, _aws_config(settings), create_resources=create_resources, **adapter_args)


def _sqs_writer(target: str, settings: Settings | None, create_resources: bool, **adapter_args: Any) -> TransportWriter:
    from producers.sqs_writer import SqsWriter

    return SqsWriter(target, _aws_config(settings), create_resources=create_resources, **adapter_args)


# -- readers: (target, settings, group, create_resources, adapter arguments) -> reader --


def _spool_reader(target: str, settings: Settings | None, group: str, create_resources: bool,
                  **adapter_args: Any) -> TransportReader:
    return SpoolReader(target, group=group, **_reader_defaults(settings, adapter_args))


def _mpqueue_reader(target: str, settings: Settings | None, group: str, create_resources: bool,
                    **adapter_args: Any) -> TransportReader:
    return MpQueueReader(**adapter_args)


def _kinesis_reader(target: str, settings: Settings | None, group: str, create_resources: bool,
                    **adapter_args: Any) -> TransportReader:
    from producers.kinesis_reader import open_kinesis_reader

    return open_kinesis_reader(target, _aws_config(settings), group=group, create_resources=create_resources,
                               **_reader_defaults(settings, adapter_args))


def _sqs_reader(target: str, settings: Settings | None, group: str, create_resources: bool,
                **adapter_args: Any) -> TransportReader:
    """A queue is one partition that every reader shares: there are no consumer
    groups, and a receive takes at most 10 messages, so `group` and the batch
    size do not apply."""
    from producers.sqs_reader import SqsReader

    poll_interval = adapter_args.pop("poll_interval", settings.idle_poll_interval if settings is not None else 0.2)
    return SqsReader(target, _aws_config(settings), create_resources=create_resources, poll_interval=poll_interval,
                     **adapter_args)


# scheme -> (builder, whether the part after `:` is required (True) or must be empty (False))
WRITERS: dict[str, tuple[Callable[..., TransportWriter], bool]] = {
    "spool": (_spool_writer, True),
    "console": (_console_writer, False),
    "mpqueue": (_mpqueue_writer, False),
    "kinesis": (_kinesis_writer, True),
    "sqs": (_sqs_writer, True),
}

READERS: dict[str, tuple[Callable[..., TransportReader], bool]] = {
    "spool": (_spool_reader, True),
    "mpqueue": (_mpqueue_reader, False),
    "kinesis": (_kinesis_reader, True),
    "sqs": (_sqs_reader, True),
}


def _builder(registry: dict[str, tuple[Callable[..., Any], bool]], uri: str) -> tuple[Callable[..., Any], str]:
    scheme, _, target = uri.partition(":")
    entry = registry.get(scheme)
    if entry is None and scheme in WRITERS:
        raise BadTransportUri(f"transport URI {uri!r} is write-only: {EXPECTED}")
    if entry is None or bool(target) != entry[1]:
        raise BadTransportUri(f"unknown transport URI {uri!r}: {EXPECTED}")
    return entry[0], target


def open_writer(uri: str, settings: Settings | None = None, create_resources: bool = False,
                **adapter_args: Any) -> TransportWriter:
    """The writer for `uri`; `BadTransportUri` for a malformed one."""
    build, target = _builder(WRITERS, uri)
    return build(target, settings, create_resources, **adapter_args)


def open_reader(uri: str, settings: Settings | None = None, group: str = "default", create_resources: bool = False,
                **adapter_args: Any) -> TransportReader:
    """The reader for `uri` in consumer `group`; `BadTransportUri` for a malformed one."""
    build, target = _builder(READERS, uri)
    return build(target, settings, group, create_resources, **adapter_args)
