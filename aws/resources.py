"""Streams, tables, buckets and queues: check that one exists, or create it.

Each `ensure_*` waits until the resource is usable. Without `create=True` a
missing one raises `MissingResource` (one line, naming it and the
`--create-resources` flag); with it, a resource created concurrently by
another process is used as it is. Which resources a profile needs is the
composition root's business (`config/aws_resources.py`).

Usage::

    ensure_stream(kinesis, "events", create=False)            # MissingResource if absent
    url = ensure_queue(sqs, "events", create=True, visibility_timeout=120)
    ensure_table(dynamodb, "counts", True, "pk", "sk")
    enable_ttl(dynamodb, "counts", "expires_at")
"""

from __future__ import annotations

from typing import Any

import botocore.exceptions

from aws.errors import MissingResource, error_code, one_line, startup_call

_MISSING_HINT = "; create it or pass --create-resources"


def ensure_stream(client: Any, name: str, create: bool, shard_count: int = 2) -> None:
    """The Kinesis stream exists and is ACTIVE (created when `create`)."""

    def check() -> None:
        try:
            status = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
        except client.exceptions.ResourceNotFoundException:
            if not create:
                raise MissingResource(f"kinesis stream {name!r} not found{_MISSING_HINT}") from None
            try:
                client.create_stream(StreamName=name, ShardCount=shard_count)
            except client.exceptions.ResourceInUseException:
                pass  # someone else is creating it at the same time
            status = "CREATING"
        if status != "ACTIVE":
            client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})

    startup_call(f"kinesis stream {name!r}", check)


def ensure_table(client: Any, name: str, create: bool, hash_key: str, range_key: str | None = None) -> None:
    """The DynamoDB table (string keys, on-demand billing) exists and is ACTIVE."""

    def check() -> None:
        try:
            status = client.describe_table(TableName=name)["Table"]["TableStatus"]
        except client.exceptions.ResourceNotFoundException:
            if not create:
                raise MissingResource(f"dynamodb table {name!r} not found{_MISSING_HINT}") from None
            keys = [(hash_key, "HASH")] + ([(range_key, "RANGE")] if range_key else [])
            try:
                client.create_table(
                    TableName=name,
                    KeySchema=[{"AttributeName": k, "KeyType": t} for k, t in keys],
                    AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k, _ in keys],
                    BillingMode="PAY_PER_REQUEST",
                )
            except client.exceptions.ResourceInUseException:
                pass
            status = "CREATING"
        if status != "ACTIVE":
            client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 300})

    startup_call(f"dynamodb table {name!r}", check)


def ensure_bucket(client: Any, name: str, create: bool) -> None:
    """The S3 bucket exists and is ours (created in the client's region when `create`)."""

    def check() -> None:
        try:
            client.head_bucket(Bucket=name)
            return
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        if not create:
            raise MissingResource(f"s3 bucket {name!r} not found{_MISSING_HINT}")
        region = client.meta.region_name
        options: dict[str, Any] = {}
        if region and region != "us-east-1":
            options["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            client.create_bucket(Bucket=name, **options)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        client.get_waiter("bucket_exists").wait(Bucket=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    startup_call(f"s3 bucket {name!r}", check)


def ensure_queue(client: Any, name: str, create: bool, visibility_timeout: int = 120) -> str:
    """The SQS queue's URL (the queue is created when `create`)."""

    def check() -> str:
        try:
            return client.get_queue_url(QueueName=name)["QueueUrl"]
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
                raise
        if not create:
            raise MissingResource(f"sqs queue {name!r} not found{_MISSING_HINT}")
        try:
            return client.create_queue(
                QueueName=name, Attributes={"VisibilityTimeout": str(visibility_timeout)}
            )["QueueUrl"]
        except botocore.exceptions.ClientError as exc:
            # Created concurrently with other attributes: use it as it is.
            if error_code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
                raise
            return client.get_queue_url(QueueName=name)["QueueUrl"]

    return startup_call(f"sqs queue {name!r}", check)


def enable_ttl(client: Any, table: str, attribute: str) -> None:
    """Turn on DynamoDB TTL on `attribute` (already on: nothing to do)."""

    def call() -> None:
        status = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        if status.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") and status.get("AttributeName") == attribute:
            return
        try:
            client.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute})
        except botocore.exceptions.ClientError as exc:
            if "already enabled" not in one_line(exc).lower():
                raise

    startup_call(f"dynamodb table {table!r} time to live", call)
