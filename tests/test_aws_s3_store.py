"""The S3 object store against moto: round trip under a prefix, paging,
multipart above the threshold, SSE, keys that cannot leave the prefix, and
concurrent uploads (sync() waits for them, uploads failed ones again, keeps
the order of two puts of one key, bounds the bytes held)."""

from __future__ import annotations

import os
import threading
import time

import botocore.exceptions
import pytest

from consumers.raw_event_writer import raw_event_key
from consumers.s3_object_store import S3ObjectStore
from aws.resources import ensure_bucket
from tests.aws_fixtures import client, unique
from tests.fault_proxy import FaultProxy

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
    store = S3ObjectStore(s3, name, multipart_threshold=8 * MIB, part_size=5 * MIB, upload_threads=1)
    operations: list[str] = []
    s3.meta.events.register("provide-client-params.s3.*", lambda model, **_: operations.append(model.name))
    body = os.urandom(11 * MIB + 17)
    small = b"x" * (8 * MIB)  # at the threshold: one PUT

    store.put("big/object.bin", body)
    store.put("small/object.bin", small)
    store.sync()

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
    store.put("big/object.bin", b"y" * (6 * MIB))
    with pytest.raises(ConnectionError):
        store.sync()

    assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []
    assert all_keys(s3, name) == []


def test_server_side_encryption_setting(aws_env: str) -> None:
    s3, name = bucket(aws_env)
    store = S3ObjectStore(s3, name, sse="AES256", multipart_threshold=6 * MIB, part_size=5 * MIB)
    store.put("a/small", b"s")
    store.put("a/big", b"b" * (7 * MIB))
    store.sync()
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
    store.sync()

    (stored,) = all_keys(s3, name)
    assert stored == f"tenant/{key}"
    assert stored.startswith("tenant/events/dt=2021-02-09/hour=4/part-")
    assert ".." not in stored.split("/") and "//" not in stored
    assert len(stored.split("/")) == 5  # tenant/events/dt=/hour=/part-...


def test_uploads_run_concurrently_and_sync_waits_for_all_of_them(aws_env: str) -> None:
    s3, name = bucket(aws_env)
    store = S3ObjectStore(s3, name, upload_threads=8)
    in_flight = [0, 0]
    lock = threading.Lock()

    def before(**_) -> None:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
        time.sleep(0.02)  # a slow S3: uploads overlap

    def after(**_) -> None:
        with lock:
            in_flight[0] -= 1

    s3.meta.events.register("before-call.s3.PutObject", before)
    s3.meta.events.register("after-call.s3.PutObject", after)
    started = time.monotonic()
    for i in range(40):
        store.put(f"k/{i:03d}", str(i).encode())
    queued = time.monotonic() - started
    store.sync()
    assert queued < 0.4  # put() does not wait for S3 (40 uploads one by one take 0.8 s)
    assert in_flight[1] > 1
    assert store.puts == 40
    assert sorted(all_keys(s3, name)) == [f"k/{i:03d}" for i in range(40)]


def test_a_failed_upload_is_raised_by_sync_and_uploaded_again_by_the_next(proxy: FaultProxy) -> None:
    s3 = client("s3", proxy.endpoint)
    name = unique("bkt")
    ensure_bucket(s3, name, True)
    store = S3ObjectStore(s3, name)
    proxy.error(f"PUT /{name}/a/", "SlowDown", status=400, times=1)  # not retried by a max_attempts=1 client
    store.put("a/1", b"one")
    store.put("b/2", b"two")
    with pytest.raises(botocore.exceptions.ClientError):
        store.sync()
    assert all_keys(s3, name) == ["b/2"]
    store.sync()
    assert sorted(all_keys(s3, name)) == ["a/1", "b/2"]
    assert store.get("a/1") == b"one"


def test_two_puts_of_one_key_land_in_order_and_get_sees_the_last(aws_env: str) -> None:
    s3, name = bucket(aws_env)
    store = S3ObjectStore(s3, name, upload_threads=4)
    slow = threading.Event()

    def first_is_slow(params, **_) -> None:
        if params["Body"] == b"first" and not slow.is_set():
            slow.set()
            time.sleep(0.3)

    s3.meta.events.register("provide-client-params.s3.PutObject", first_is_slow)
    store.put("k", b"first")
    store.put("k", b"second")
    assert store.get("k") == b"second"
    store.sync()
    assert s3.get_object(Bucket=name, Key="k")["Body"].read() == b"second"


def test_put_waits_while_the_pending_bytes_are_at_the_bound(aws_env: str) -> None:
    s3, name = bucket(aws_env)
    store = S3ObjectStore(s3, name, upload_threads=4, max_pending_bytes=3000)
    most = [0]

    def before(**_) -> None:
        most[0] = max(most[0], store._pending_bytes)
        time.sleep(0.01)

    s3.meta.events.register("before-call.s3.PutObject", before)
    for i in range(20):
        store.put(f"k/{i}", b"x" * 1000)
    store.put("big", b"y" * 5000)  # larger than the bound: goes alone
    store.sync()
    assert most[0] <= 5000
    assert len(all_keys(s3, name)) == 21
