"""AWS failures as one line, without secrets.

`AwsError` is a `ValueError`: the CLI prints it as one line and exits 2, as
for any start-up error the operator can fix (credentials, a missing stream).

Usage::

    description = startup_call("kinesis stream 'events'", lambda: client.describe_stream_summary(...))
    if error_code(exc) == "ConditionalCheckFailedException": ...
"""

from __future__ import annotations

from typing import Callable, TypeVar

import botocore.exceptions

T = TypeVar("T")


class AwsError(ValueError):
    """An AWS call at start-up failed; the message is one line, without secrets."""


class MissingResource(AwsError):
    """A stream, table, bucket or queue is missing and may not be created."""


def error_code(exc: BaseException) -> str:
    """The AWS error code of a `ClientError` (`""` for anything else)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def one_line(exc: BaseException) -> str:
    """A short, secret-free description of an AWS failure."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip().rstrip(":")
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def startup_call(what: str, call: Callable[[], T]) -> T:
    """Run a start-up AWS call; any failure becomes one `AwsError` line."""
    try:
        return call()
    except AwsError:
        raise
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise AwsError(f"{what}: {one_line(exc)}") from None
