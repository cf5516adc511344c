"""S3-style object keys built from event values, which are never trusted."""

from __future__ import annotations

import hashlib
import re
import string
from typing import Mapping

MAX_PART_CHARS = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")


def sanitize_key_part(value: object) -> str:
    """One path segment that cannot escape its prefix.

    `/`, `\\`, control characters and anything outside `[A-Za-z0-9._=-]` become
    `_`; a segment made only of dots (`..`) is replaced. A value that had to be
    changed, or was cut for being over-long, gets a digest of the original so
    that distinct values stay distinct (`a/b` and `a_b` do not share a folder).

    >>> sanitize_key_part("click")
    'click'
    >>> sanitize_key_part("../../etc/passwd")
    '.._.._etc_passwd-3fe5b8a45dc8'
    """
    text = str(value)
    safe = _UNSAFE.sub("_", text)
    if not safe or set(safe) == {"."}:
        safe = "_dots_" if safe else "_empty_"
    if safe == text and len(safe) <= MAX_PART_CHARS:
        return safe
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return safe[: MAX_PART_CHARS - 13] + "-" + digest


def render_key(template: str, values: Mapping[str, object]) -> str:
    """Fill a key template such as
    `events/event_type={event_type}/dt={dt}/hour={hour}/part-{partition}-{first_position}.jsonl.gz`;
    every substituted value is sanitised.

    >>> render_key("u/{customer_id}/x", {"customer_id": "a/b"})
    'u/a_b-8f1d19cf4f86/x'
    """
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    missing = fields - set(values)
    if missing:
        raise KeyError(f"key template {template!r} uses unknown field(s): {', '.join(sorted(missing))}")
    return template.format(**{name: sanitize_key_part(values[name]) for name in fields})


def check_key(key: str) -> str:
    """Reject a key that could leave its store's root."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key or "\\" in key:
        raise ValueError(f"unsafe object key: {key[:120]!r}")
    return key


_NAME_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
MAX_NAME_CHARS = 160


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
