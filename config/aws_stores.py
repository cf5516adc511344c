"""The stores of the aws backend (`[pipeline] backend = "aws"`).

The composition root (config/root.py) imports this module only when the aws
backend is chosen, so local mode never imports boto3. Ports and their adapters:

- `CountStore`  -> `DynamoDbCountStore` on `[aws] count_table`;
- `ObjectStore` -> `S3ObjectStore` on `[aws] bucket` under `object_prefix`.

(Dead letters stay in the local file on every backend: see
`Components.dead_letters`.)

Each adapter is built on first use and checks that its table or bucket exists
(a missing one is a one-line error; `--create-resources` on produce, consume
or serve creates them first: `config/aws_resources.py`).

Usage::

    aws = backend_config(settings)   # ConfigError on a bad [aws] key
    store = count_store(aws)
"""

from __future__ import annotations

from aws.clients import aws_client
from aws.resources import ensure_bucket, ensure_table
from aws.settings import AwsConfig
from config.settings import Settings
from consumers.ports import CountStore, ObjectStore


def count_store(aws: AwsConfig) -> CountStore:
    from consumers.dynamodb_count_store import HASH_KEY, RANGE_KEY, DynamoDbCountStore

    client = aws_client("dynamodb", aws, pool_size=aws.write_threads + aws.scan_segments, validate=False)
    ensure_table(client, aws.count_table, False, HASH_KEY, RANGE_KEY)
    return DynamoDbCountStore(
        client, aws.count_table, threads=aws.write_threads, scan_segments=aws.scan_segments,
        ttl_seconds=aws.count_ttl_days * 86_400,
    )


def object_store(aws: AwsConfig) -> ObjectStore:
    from consumers.s3_object_store import S3ObjectStore

    client = aws_client("s3", aws, pool_size=aws.s3_upload_threads)
    ensure_bucket(client, aws.bucket, False)
    return S3ObjectStore(
        client,
        aws.bucket,
        prefix=aws.object_prefix,
        multipart_threshold=aws.multipart_threshold,
        part_size=aws.multipart_part_size,
        sse=aws.s3_sse,
        sse_kms_key_id=aws.s3_sse_kms_key_id,
        upload_threads=aws.s3_upload_threads,
    )


def backend_config(settings: Settings) -> AwsConfig:
    return settings.aws  # a bad [aws] key is a ConfigError here
