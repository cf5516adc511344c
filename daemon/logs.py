"""Structured logging: human-readable by default, JSON with `--log-format json`.

A filter redacts anything that looks like a credential before it is written,
whatever logger it came from (botocore included)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_SECRET = re.compile(
    r"(?i)((?:aws_secret_access_key|secret|password|passwd|token|authorization|api[_-]?key|sdk[_-]?key)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;}]+)"
)
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
_BASIC = re.compile(r"(?i)(basic|bearer)\s+[A-Za-z0-9+/=._-]{8,}")


def redact(text: str) -> str:
    # Credentials after a scheme first: `Authorization: Basic <token>` must
    # lose the token, not just the word "Basic".
    text = _BASIC.sub(lambda m: m.group(1) + " ***", text)
    text = _SECRET.sub(lambda m: m.group(1) + "***", text)
    return _AWS_KEY_ID.sub("***", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            entry[key] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def setup_logging(level: str = "WARNING", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, str(level).upper(), logging.WARNING))
