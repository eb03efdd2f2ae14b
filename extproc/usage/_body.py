"""Reading JSON bodies the same way in every API module: never raising, naming problems.

Problems come from one small vocabulary that telemetry counts: "empty body", "malformed
JSON", "body is not a JSON object", "<path> is not a non-negative integer", "<key> is not a
string".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def load_object(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A body's JSON object, or None and why not."""
    if not body or body.isspace():
        return None, "empty body"
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers bad JSON, bad UTF-8 and over-long integer literals.
        return None, "malformed JSON"
    if not isinstance(obj, dict):
        return None, "body is not a JSON object"
    return obj, None


def count(obj: dict[str, Any], key: str, path: str, problems: list[str]) -> int | None:
    """A token count: a non-negative integer (booleans are not counts), or None."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append(f"{path} is not a non-negative integer")
        return None
    return value


def optional_str(obj: dict[str, Any], key: str, problems: list[str]) -> str | None:
    """A non-empty string field, or None (a wrong type is a problem)."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{key} is not a string")
        return None
    return value or None


def first(problems: list[str]) -> str | None:
    return problems[0] if problems else None


# Prompt estimates only size admission holds (the response's usage is what gets charged):
# about 4 bytes of UTF-8 per token for English text.
BYTES_PER_TOKEN = 4


def utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def tokens_for(size: int) -> int:
    """The token estimate of `size` bytes of text, rounded up."""
    return -(-size // BYTES_PER_TOKEN)


def text_size(
    roots: Iterable[Any], *, skip_types: frozenset[str] = frozenset(), skip_keys: frozenset[str] = frozenset()
) -> int:
    """UTF-8 bytes of every string inside `roots`: the text a prompt sends.

    Skipped: objects whose `type` is in `skip_types` (media parts) and values under
    `skip_keys` (signatures, encoded media): they are not text, and counting base64 as
    text would hold far more than a call can cost.
    """
    size = 0
    # Iterative: a body json accepted can still nest deeper than a recursive walk may go.
    pending: list[Any] = list(roots)
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            size += utf8_size(item)
        elif isinstance(item, dict):
            kind = item.get("type")
            # `type` is client input: a list or dict there must not crash a set lookup.
            if isinstance(kind, str) and kind in skip_types:
                continue
            pending.extend(value for key, value in item.items() if key not in skip_keys)
        elif isinstance(item, list):
            pending.extend(item)
    return size
