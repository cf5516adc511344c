"""What every AWS adapter shares: the typed `[aws]` settings, the boto3 client
factory, one-line errors, and the creation of streams, tables, buckets and
queues.

This package imports nothing else of the project, so producers, consumers and
the composition root (`config/`) may all use it. Building `AwsConfig` from the
loaded settings is `config/`'s job (`Settings.aws`).

Usage::

    from aws.clients import aws_client
    from aws.resources import ensure_stream
    from aws.settings import AwsConfig

    kinesis = aws_client("kinesis", AwsConfig())
    ensure_stream(kinesis, "events", create=True, shard_count=2)
"""
