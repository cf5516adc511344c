"""`console`: writes each record as one line on a text stream (stdout by default).

Usage::

    writer = ConsoleWriter()
    writer.send([b'{"customer_id": "c1"}'])   # prints {"customer_id": "c1"}
    writer.close()                             # flushes; never closes stdout
"""

from __future__ import annotations

import sys
from typing import Sequence, TextIO


class ConsoleWriter:
    """A `TransportWriter` for eyeballing a producer's output; never full."""

    def __init__(self, stream: TextIO | None = None) -> None:
        # Resolved at construction, not import, so pytest's capsys and
        # redirect_stdout see the writes.
        self._stream = stream if stream is not None else sys.stdout

    def send(self, records: Sequence[bytes]) -> int:
        # Records should be UTF-8 NDJSON; anything else is shown escaped
        # rather than aborting the whole batch.
        text = "".join(bytes(r).decode("utf-8", errors="backslashreplace") + "\n" for r in records)
        self._stream.write(text)
        self._stream.flush()
        return len(records)

    def close(self) -> None:
        self._stream.flush()
