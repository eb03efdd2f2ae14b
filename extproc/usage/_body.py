"""Reading JSON bodies the same way in every API module: never raising, naming problems.

Problems come from one small vocabulary that telemetry counts: "empty body", "malformed
JSON", "body is not a JSON object", "<path> is not a non-negative integer", "<key> is not a
string".
"""

from __future__ import annotations

import json
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
