"""Parse bucketer attributes: `tier:"platinum",member_since_days:56`.

Grammar: pairs separated by `,`; each pair is `key:value` where the key is the
text before the pair's first `:` (trimmed, non-empty) and the value is one
JSON value (string, number, true/false/null, array or object). Because the
value is read by a JSON decoder, not by splitting, a quoted value may hold `:`
and `,` (`url:"http://x"`, `x:"a,b"`). A pair that does not parse raises
`AttributeParseError` naming it; nothing is dropped silently (the legacy Lambda
bucketer dropped such pairs).

Usage::

    >>> parse_attributes('tier:"platinum",member_since_days:56')
    {'tier': 'platinum', 'member_since_days': 56}
    >>> parse_attributes('tier:platinum')
    Traceback (most recent call last):
    ...
    optimizely_integration.attributes.AttributeParseError: unparsable attribute pair 'tier:platinum': ...
"""

from __future__ import annotations

import json
from typing import Any, Iterable

_WHITESPACE = " \t\r\n"


class AttributeParseError(ValueError):
    """`pair` is the offending text, as the user wrote it."""

    def __init__(self, pair: str, why: str) -> None:
        super().__init__(f"unparsable attribute pair {pair!r}: {why}")
        self.pair = pair
        self.why = why


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WHITESPACE:
        i += 1
    return i


def _bad_pair(text: str, start: int) -> str:
    """The offending pair for error messages: up to the next comma (best effort)."""
    end = text.find(",", start)
    return text[start:end if end >= 0 else len(text)].strip()


def parse_attributes(text: str | None) -> dict[str, Any]:
    """`k:v,k:v` with JSON values into a dict; "" or None gives {}."""
    result: dict[str, Any] = {}
    if text is None or not text.strip():
        return result
    i = 0
    n = len(text)
    while True:
        start = _skip_ws(text, i)
        colon = text.find(":", start)
        comma = text.find(",", start)
        if colon < 0 or (0 <= comma < colon):
            pair = _bad_pair(text, start)
            raise AttributeParseError(pair, "expected key:value" if pair else f"empty pair at character {start}")
        key = text[start:colon].strip()
        if not key:
            raise AttributeParseError(_bad_pair(text, start), "empty key")
        value_at = _skip_ws(text, colon + 1)
        try:
            value, end = _DECODER.raw_decode(text, value_at)
        except (json.JSONDecodeError, ValueError):
            raise AttributeParseError(
                _bad_pair(text, start), 'the value must be JSON (quote strings: key:"text")'
            ) from None
        end = _skip_ws(text, end)
        if key in result:
            raise AttributeParseError(text[start:end].strip(), f"duplicate key {key!r}")
        if end < n and text[end] != ",":
            # e.g. `n:12abc` decodes 12 then stops: the pair is not one JSON value.
            raise AttributeParseError(_bad_pair(text, start), "unexpected text after the value")
        result[key] = value
        if end >= n:
            return result
        i = end + 1
        if _skip_ws(text, i) >= n:
            raise AttributeParseError("", f"empty pair after the trailing comma at character {end}")


def parse_attribute_args(values: Iterable[str] | None) -> dict[str, Any]:
    """Merge repeated CLI `--attr` values (each may hold several pairs)."""
    merged: dict[str, Any] = {}
    for value in values or ():
        for key, parsed in parse_attributes(value).items():
            if key in merged:
                raise AttributeParseError(f"{key}:{json.dumps(parsed)}", f"duplicate key {key!r}")
            merged[key] = parsed
    return merged
