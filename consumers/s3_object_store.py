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
"""

from __future__ import annotations

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
        self.puts = 0
        self.multipart_puts = 0

    def _full_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, body: bytes) -> None:
        full_key = self._full_key(key)
        if len(body) > self.multipart_threshold:
            self._put_multipart(full_key, body)
            self.multipart_puts += 1
        else:
            self.client.put_object(Bucket=self.bucket, Key=full_key, Body=body, **self._sse)
        self.puts += 1

    def sync(self) -> None:
        """Nothing to do: S3 acknowledges a PUT once the object is durable."""

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
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full_key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"s3://{self.bucket}/{self.prefix}{key}") from None

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys (without the store's prefix) that start with `prefix`, in S3's
        (lexicographic) order, page by page."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix, **self._paging):
            for item in page.get("Contents", ()):
                yield item["Key"][len(self.prefix) :]
