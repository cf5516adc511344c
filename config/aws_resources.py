"""`--create-resources`: the composition root creates what a command's AWS
transport and the profile need, before any adapter is built.

On `produce`, `consume`, `serve`, `replay-dead-letter` and `optimizely-forward`, the flag
with a `kinesis:` or `sqs:` transport creates every table, stream, bucket and
queue a later command needs:

- the Kinesis lease (and checkpoint) table of the consumer group, so a later
  `consume` finds it even when only `produce` was given the flag;
- with the aws backend, the count table (with its time to live when
  `[aws] count_ttl_days` is set) and the bucket the sinks write to.

The transport itself then creates its own stream or queue (its
`create_resources` argument). A local transport (`spool:`, `console`, ...)
creates nothing here, whatever the backend.

Usage::

    if args.create_resources:
        create_profile_resources(settings, args.to)
    writer = open_writer(args.to, settings=settings, create_resources=args.create_resources)
"""

from __future__ import annotations

from config.settings import Settings

AWS_SCHEMES = ("kinesis", "sqs")


def create_profile_resources(settings: Settings, uri: str, group: str = "default") -> None:
    """Create (or find) the resources `uri`'s transport and the profile use
    beyond the transport's own stream or queue. Nothing for a local transport."""
    scheme = uri.partition(":")[0]
    if scheme not in AWS_SCHEMES:
        return
    # Imported here: boto3 only once AWS is in play.
    from aws.clients import aws_client
    from aws.resources import enable_ttl, ensure_bucket, ensure_table

    aws = settings.aws
    if scheme == "kinesis":
        from producers.kinesis_lease_table import ensure_lease_table

        ensure_lease_table(aws, group, True)
    if settings.backend == "aws":
        from consumers.dynamodb_count_store import HASH_KEY, RANGE_KEY, TTL_ATTRIBUTE

        dynamodb = aws_client("dynamodb", aws)
        ensure_table(dynamodb, aws.count_table, True, HASH_KEY, RANGE_KEY)
        if aws.count_ttl_days:
            enable_ttl(dynamodb, aws.count_table, TTL_ATTRIBUTE)
        ensure_bucket(aws_client("s3", aws), aws.bucket, True)
