"""Redaction of secrets from anything Rivulet writes about itself: log lines
(text and JSON, messages, fields, tracebacks) and the CLI's error lines.

What is redacted:

* the userinfo of a URL (`http://user:pass@host` -> `http://***@host`), in
  any scheme, e.g. `AWS_ENDPOINT_URL`;
* the value after a secret's name (`password=`, `"secret": "..."`,
  `aws_secret_access_key`, `token`, `X-Amz-Signature`, `api_key`, `sdk_key`,
  `cookie`, ...), in `key=value`, `key: value` and JSON forms;
* the credentials after `Basic`, `Bearer`, `Digest` and `AWS4-HMAC-SHA256`;
* known secret shapes wherever they stand: AWS access key ids
  (`AKIA...`, `ASIA...`), JSON Web Tokens, GitHub, Slack, Stripe and Google
  API keys, PEM private keys.

It works on text, so it also catches a secret inside an exception's message
or a traceback's source lines. It cannot know a secret with no name and no
shape (a bare password in a sentence): keep those out of messages.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://userinfo@ : the userinfo is everything up to the last @ before the
# host, without a slash, space or quote.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s\"'<>?#]+@")
_AUTH_SCHEME = re.compile(r"(?i)\b(basic|bearer|digest|aws4-hmac-sha256)\s+[^\s\"',;]{4,}(?:,\s*[^\s\"',;]+)*")
_NAMES = (
    r"aws_secret_access_key|aws_session_token|secret[_-]?access[_-]?key|[a-z_-]*secret|password|passwd|pwd"
    r"|[a-z_-]*token|authorization|api[_-]?key|sdk[_-]?key|access[_-]?key|private[_-]?key"
    r"|x-amz-signature|x-amz-security-token|cookie|set-cookie"
)
# name, then an optional closing quote of the name, then `=` or `:`, then the
# value: quoted (up to its closing quote) or bare (up to a separator).
_NAMED = re.compile(
    rf"(?i)((?<![a-z0-9])(?:{_NAMES})[\"']?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s\"',;&}})\]]+)"
)
_SHAPES = re.compile(
    r"\b(?:AKIA|ASIA|AIDA|AROA|ANPA)[A-Z0-9]{16}\b"  # AWS access key ids
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{30,}\b"  # GitHub
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b"  # Stripe
    r"|\bAIza[0-9A-Za-z_-]{35}\b"  # Google API key
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"
)


_SCHEMES = {"basic", "bearer", "digest", "aws4-hmac-sha256"}


def _named(match: re.Match[str]) -> str:
    value = match.group(2)
    if value.lower() in _SCHEMES:  # `Authorization: Basic ***`: the credentials are already masked
        return match.group(0)
    if value[:1] in "\"'":
        return f"{match.group(1)}{value[0]}{MASK}{value[0]}"
    return match.group(1) + MASK


def redact(text: str) -> str:
    """`text` with every secret it shows replaced by `***`.

    >>> redact("endpoint http://admin:hunter2@localhost:4566 failed")
    'endpoint http://***@localhost:4566 failed'
    >>> redact('{"password": "p w", "user": "x"} Authorization: Basic dXNlcjpwYXNz')
    '{"password": "***", "user": "x"} Authorization: Basic ***'
    """
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    # A scheme's credentials first: `Authorization: Basic <token>` must lose
    # the token, not just the word "Basic".
    text = _AUTH_SCHEME.sub(lambda m: m.group(1) + " " + MASK, text)
    text = _NAMED.sub(_named, text)
    return _SHAPES.sub(MASK, text)


_SECRET_NAME = re.compile(rf"(?i)(?:{_NAMES})")


def redact_value(value: Any) -> Any:
    """`redact` over the strings of a JSON-like value (a log line's fields);
    the value of a key named like a secret is masked whole."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: MASK if isinstance(key, str) and _SECRET_NAME.fullmatch(key) and item else redact_value(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(item) for item in value]
    return value
