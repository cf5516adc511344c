"""An object store over a local directory, laid out exactly as S3 keys."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from consumers.object_keys import check_key


class LocalObjectStore:
    """`put("events/dt=2021-03-01/part-1.jsonl.gz", body)` writes
    `ROOT/events/dt=2021-03-01/part-1.jsonl.gz` atomically (temp file, fsync,
    rename), so a reader never sees half an object and a replay overwrites."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise ValueError(f"object key escapes the store: {key[:120]!r}")
        return path

    def put(self, key: str, body: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def list(self, prefix: str = "") -> Iterator[str]:
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key
