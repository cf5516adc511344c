"""Optimizely's webhook signature: `X-Hub-Signature: sha1=<hex HMAC-SHA1 of
the raw body keyed by the webhook secret>`.

Usage::

    header = sign_webhook(body, secret)         # what Optimizely sends
    verify_webhook(body, header, secret)        # True
    verify_webhook(body, header, "")            # False: no secret, webhook disabled
"""

from __future__ import annotations

import hashlib
import hmac


def verify_webhook(body: bytes, signature_header: str | None, secret: str | None) -> bool:
    """True when `signature_header` signs `body` with `secret`; False without
    a secret or header."""
    if not secret or not signature_header:
        return False
    scheme, _, received = signature_header.strip().partition("=")
    if scheme.lower() != "sha1" or not received:
        return False
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha1).hexdigest()
    return hmac.compare_digest(expected, received.strip().lower())


def sign_webhook(body: bytes, secret: str) -> str:
    """The header value Optimizely would send (for tests and tools)."""
    return "sha1=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha1).hexdigest()
