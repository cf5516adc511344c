"""Object keys: the check every store applies, and the injective encoding of
a value (a source partition, a rollup name) inside a file name.

No event value is ever part of a key (docs/store.md): the writers build keys
from a fixed layout, the UTC date and hour, the encoded source partition, and
a position (raw events) or a window start and content digest (aggregates).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache


def check_key(key: str) -> str:
    """Reject a key that could leave its store's root: empty, absolute, with
    an empty, `.` or `..` part, a backslash or a NUL. Returns the key.

    >>> check_key("events/dt=2021-03-01/hour=4/part-x-000000000001.parquet")
    'events/dt=2021-03-01/hour=4/part-x-000000000001.parquet'
    >>> check_key("events/../x")
    Traceback (most recent call last):
    ...
    ValueError: unsafe object key: 'events/../x'
    """
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key or "\\" in key:
        raise ValueError(f"unsafe object key: {key[:120]!r}")
    return key


_NAME_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
MAX_NAME_CHARS = 160


# Writers name thousands of objects after the same few partitions per run.
@lru_cache(maxsize=4096)
def encode_name_part(value: str) -> str:
    """A value as part of an object's file name, encoded injectively.

    Every byte of its UTF-8 outside `[A-Za-z0-9._-]` becomes `%XX`, so two
    different values never share a name and `/` never appears. A name longer
    than `MAX_NAME_CHARS` keeps its start and ends with a 128-bit digest of the
    whole value: still distinct, and short enough for any file system.

    >>> encode_name_part("/data/in put.csv")
    '%2Fdata%2Fin%20put.csv'
    """
    raw = value.encode("utf-8", "surrogatepass")
    text = "".join(chr(b) if b in _NAME_SAFE else f"%{b:02X}" for b in raw)
    if len(text) <= MAX_NAME_CHARS:
        return text
    digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    return text[: MAX_NAME_CHARS - 34] + "~" + digest
