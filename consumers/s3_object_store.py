"""`ObjectStore` on S3: the AWS adapter of the port `LocalObjectStore` mirrors.

Usage::

    store = S3ObjectStore(aws_client("s3", aws), "my-bucket", prefix="rivulet/")
    store.put("events/dt=2021-03-01/hour=4/part-sqs%3Arivulet-queue-000000000001.parquet", body)
    store.get(key)
    list(store.list("events/dt=2021-03-01/"))

The keys are those of the local store (docs/store.md), under `prefix`: the
put above writes `s3://my-bucket/rivulet/events/dt=2021-03-01/hour=4/...`.
Every key is checked with `check_key` (no `..`, no empty or absolute parts, no
backslash or NUL) before the prefix is added, so no key can leave it.

A body larger than `multipart_threshold` goes up as a multipart upload in
`part_size` parts (aborted on failure, so no orphaned parts are billed). A put
of the same key replaces the object whole: S3 never shows half an object.

Uploads are concurrent: `put` hands the object to a bounded pool
(`upload_threads` uploads at once, at most `max_pending_bytes` of bodies held;
beyond that `put` waits, so a slow S3 slows the pipeline instead of growing
memory) and returns. `sync()` waits for every upload so far and raises if one
failed after botocore's retries; the failed objects are kept and uploaded
again by the next `sync()` (`RetryingObjectStore` retries it with backoff),
so the writers' flush, and with it the checkpoint, never passes an object
that is not in S3. Two puts of one key are uploaded in the order they were
made. `get` and `list` first wait for the uploads they could see.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

from consumers.object_keys import check_key

MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last


class S3ObjectStore:
    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        multipart_threshold: int = 8 << 20,
        part_size: int = 8 << 20,
        sse: str = "",
        sse_kms_key_id: str = "",
        page_size: int | None = None,
        upload_threads: int = 8,
        max_pending_bytes: int = 256 << 20,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if prefix:
            # The prefix is configuration, but it is checked like a key anyway.
            prefix = check_key(prefix.strip("/")) + "/"
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.multipart_threshold = max(1, multipart_threshold)
        self.part_size = part_size
        self._sse: dict[str, str] = {}
        if sse:
            self._sse["ServerSideEncryption"] = sse
            if sse == "aws:kms" and sse_kms_key_id:
                self._sse["SSEKMSKeyId"] = sse_kms_key_id
        # Keys per ListObjectsV2 page; None: S3's 1000.
        self._paging = {"PaginationConfig": {"PageSize": page_size}} if page_size else {}
        self.max_pending_bytes = max_pending_bytes
        self._pool = ThreadPoolExecutor(max_workers=max(1, upload_threads), thread_name_prefix="s3-put")
        self._lock = threading.Condition()
        self._pending: dict[str, Future] = {}  # full key -> its latest upload
        self._pending_bytes = 0
        self._failed: dict[str, bytes] = {}  # full key -> body, uploaded again by sync()
        self._errors: list[BaseException] = []
        self.puts = 0
        self.multipart_puts = 0

    def _full_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, body: bytes) -> None:
        """Start uploading; the object is in S3 once `sync()` returns."""
        self._submit(self._full_key(key), body)

    def _submit(self, full_key: str, body: bytes) -> None:
        size = len(body)
        with self._lock:
            # Room for the body (one object alone may be larger than the bound).
            while self._pending_bytes and self._pending_bytes + size > self.max_pending_bytes:
                self._lock.wait()
            self._pending_bytes += size
            self._failed.pop(full_key, None)  # superseded by this put
            before = self._pending.get(full_key)
            future = self._pool.submit(self._upload, full_key, body, before)
            self._pending[full_key] = future
        future.add_done_callback(lambda done: self._uploaded(full_key, body, done))

    def _upload(self, full_key: str, body: bytes, before: Future | None) -> None:
        if before is not None:
            # The earlier put of this key was submitted first, so it has a
            # thread already: wait for it, then overwrite it.
            before.exception()
        if len(body) > self.multipart_threshold:
            self._put_multipart(full_key, body)
            with self._lock:
                self.multipart_puts += 1
        else:
            self.client.put_object(Bucket=self.bucket, Key=full_key, Body=body, **self._sse)
        with self._lock:
            self.puts += 1

    def _uploaded(self, full_key: str, body: bytes, future: Future) -> None:
        error = future.exception()
        with self._lock:
            self._pending_bytes -= len(body)
            if self._pending.get(full_key) is future:  # else a later put of the key supersedes this one
                del self._pending[full_key]
                if error is not None:
                    self._failed[full_key] = body
                    self._errors.append(error)
            self._lock.notify_all()

    def _wait(self, keys: set[str] | None = None) -> None:
        """Until no upload (of `keys`, or at all) is pending."""
        with self._lock:
            while any(keys is None or key in keys for key in self._pending):
                self._lock.wait()

    def sync(self) -> None:
        """Wait for every upload so far; upload the failed ones again. Raises
        if an object is still not in S3 (the next sync tries again)."""
        with self._lock:
            failed, self._failed = self._failed, {}
            self._errors.clear()
        for full_key, body in failed.items():
            self._submit(full_key, body)
        self._wait()
        with self._lock:
            if self._errors:
                error = self._errors[0]
                self._errors.clear()
                raise error

    def close(self) -> None:
        """Wait for the uploads (without raising) and stop the pool."""
        self._wait()
        self._pool.shutdown(wait=True)

    def _put_multipart(self, full_key: str, body: bytes) -> None:
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full_key, **self._sse)["UploadId"]
        try:
            parts = []
            view = memoryview(body)
            for number, offset in enumerate(range(0, len(body), self.part_size), start=1):
                chunk = view[offset : offset + self.part_size]
                etag = self.client.upload_part(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id, PartNumber=number, Body=bytes(chunk)
                )["ETag"]
                parts.append({"PartNumber": number, "ETag": etag})
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - the original failure matters more
                pass
            raise

    def get(self, key: str) -> bytes:
        full_key = self._full_key(key)
        self._wait({full_key})
        try:
            return self.client.get_object(Bucket=self.bucket, Key=full_key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"s3://{self.bucket}/{self.prefix}{key}") from None

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys (without the store's prefix) that start with `prefix`, in S3's
        (lexicographic) order, page by page."""
        self._wait()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix, **self._paging):
            for item in page.get("Contents", ()):
                yield item["Key"][len(self.prefix) :]
