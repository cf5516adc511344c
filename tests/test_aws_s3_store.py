"""The S3 object store against moto: round trip under a prefix, paging,
multipart above the threshold, SSE, and keys that cannot leave the prefix."""

from __future__ import annotations

import os

import pytest

from consumers.raw_event_writer import raw_event_key
from consumers.s3_object_store import S3ObjectStore
from producers.aws_clients import ensure_bucket
from tests.aws_fixtures import client, unique

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20


def bucket(endpoint: str) -> tuple[object, str]:
    s3 = client("s3", endpoint)
    name = unique("bkt")
    ensure_bucket(s3, name, True)
    return s3, name


def all_keys(s3, name: str) -> list[str]:
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name) for o in page.get("Contents", ())]


def test_put_get_list_under_a_prefix_with_paging(aws_env: str) -> None:
    s3, name = bucket(aws_env)
    store = S3ObjectStore(s3, name, prefix="/rivulet/")  # slashes normalised
    keys = [f"events/event_type=e{i % 3}/dt=2021-03-01/part-{i:03d}.jsonl.gz" for i in range(12)]
    for key in keys:
        store.put(key, key.encode())
    s3.put_object(Bucket=name, Key="outside/x", Body=b"not ours")

    listed = list(store.list())
    with_prefix = list(store.list("events/event_type=e1/"))

    assert listed == sorted(keys)
    assert with_prefix == sorted(k for k in keys if "e1/" in k)
    assert [store.get(k) for k in keys] == [k.encode() for k in keys]
    assert sorted(all_keys(s3, name)) == sorted(["outside/x"] + [f"rivulet/{k}" for k in keys])
    with pytest.raises(FileNotFoundError):
        store.get("events/missing")


def test_list_follows_continuation_tokens(aws_env: str) -> None:
    s3, name = bucket(aws_env)
    for i in range(12):
        s3.put_object(Bucket=name, Key=f"p/k/{i:05d}", Body=b"")
    store = S3ObjectStore(s3, name, prefix="p", page_size=5)
    calls: list[dict] = []
    s3.meta.events.register("provide-client-params.s3.ListObjectsV2", lambda params, **_: calls.append(dict(params)))

    listed = list(store.list("k/"))

    assert listed == [f"k/{i:05d}" for i in range(12)]
    assert len(calls) == 3 and all("ContinuationToken" in c for c in calls[1:])


def test_body_above_threshold_goes_up_as_multipart(aws_env: str) -> None:
    s3, name = bucket(aws_env)
    store = S3ObjectStore(s3, name, multipart_threshold=8 * MIB, part_size=5 * MIB)
    operations: list[str] = []
    s3.meta.events.register("provide-client-params.s3.*", lambda model, **_: operations.append(model.name))
    body = os.urandom(11 * MIB + 17)
    small = b"x" * (8 * MIB)  # at the threshold: one PUT

    store.put("big/object.bin", body)
    store.put("small/object.bin", small)

    assert operations == ["CreateMultipartUpload", "UploadPart", "UploadPart", "UploadPart", "CompleteMultipartUpload", "PutObject"]
    assert store.get("big/object.bin") == body
    assert s3.head_object(Bucket=name, Key="big/object.bin")["ETag"].strip('"').endswith("-3")
    assert store.get("small/object.bin") == small
    assert store.multipart_puts == 1


def test_failed_multipart_upload_is_aborted(aws_env: str) -> None:
    s3, name = bucket(aws_env)
    store = S3ObjectStore(s3, name, multipart_threshold=1, part_size=5 * MIB)

    def fail_second_part(params, **_):
        if params.get("PartNumber") == 2:
            raise ConnectionError("injected")

    s3.meta.events.register("provide-client-params.s3.UploadPart", fail_second_part)
    with pytest.raises(ConnectionError):
        store.put("big/object.bin", b"y" * (6 * MIB))

    assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []
    assert all_keys(s3, name) == []


def test_server_side_encryption_setting(aws_env: str) -> None:
    s3, name = bucket(aws_env)
    store = S3ObjectStore(s3, name, sse="AES256", multipart_threshold=6 * MIB, part_size=5 * MIB)
    store.put("a/small", b"s")
    store.put("a/big", b"b" * (7 * MIB))
    assert s3.head_object(Bucket=name, Key="a/small")["ServerSideEncryption"] == "AES256"
    assert s3.head_object(Bucket=name, Key="a/big")["ServerSideEncryption"] == "AES256"


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/absolute", "a//b", "a/./b", "a\\b", "a/\x00", "", ".."])
def test_unsafe_keys_are_refused(aws_env: str, key: str) -> None:
    s3, name = bucket(aws_env)
    store = S3ObjectStore(s3, name, prefix="tenant")
    with pytest.raises(ValueError, match="unsafe object key"):
        store.put(key, b"x")
    assert all_keys(s3, name) == []


@pytest.mark.parametrize("partition", ["kinesis:stream/shardId-000000000000", "file:../../../etc/passwd", "..", "a//b"])
def test_partition_names_in_keys_stay_under_the_prefix(aws_env: str, partition: str) -> None:
    s3, name = bucket(aws_env)
    store = S3ObjectStore(s3, name, prefix="tenant")
    key = raw_event_key(partition, 448_012, 1, ".parquet")
    store.put(key, b"PAR1")

    (stored,) = all_keys(s3, name)
    assert stored == f"tenant/{key}"
    assert stored.startswith("tenant/events/dt=2021-02-09/hour=4/part-")
    assert ".." not in stored.split("/") and "//" not in stored
    assert len(stored.split("/")) == 5  # tenant/events/dt=/hour=/part-...
