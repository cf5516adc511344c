"""What both ends of an `sqs:QUEUE` transport share: the queue's client and
URL, the batch limit of SQS's batch calls, and which failures are worth
another try.

Usage::

    client, queue_url = open_queue("events", config, create_resources=False, client=None)
    if isinstance(exc, ClientError) and retryable(exc): ...
"""

from __future__ import annotations

from typing import Any

import botocore.exceptions

from aws.clients import aws_client
from aws.errors import error_code
from aws.resources import ensure_queue
from aws.settings import AwsConfig

MAX_BATCH_ENTRIES = 10  # per SendMessageBatch, DeleteMessageBatch, ChangeMessageVisibilityBatch


def retryable(exc: botocore.exceptions.ClientError) -> bool:
    """A server-side or throttling failure, worth another try."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status >= 500 or "Throttl" in error_code(exc) or error_code(exc) == "RequestThrottled"


def open_queue(queue: str, config: AwsConfig, create_resources: bool, client: Any) -> tuple[Any, str]:
    """The client (`client`, or a new one) and URL of a queue both ends share;
    the queue is created under `--create-resources`."""
    client = client or aws_client("sqs", config)
    return client, ensure_queue(client, queue, create_resources, config.sqs_visibility_timeout)
