"""Resolving a request's dimension values: the subject keys budgets match on.

Sources are configured once (`BudgetDimensions`); this module only reads what the
request carries. An empty value counts as missing.

A dimension resolves to one string, or to several (a tuple, sorted, without repeats)
when its source holds a list: a JWT's `groups` claim, a JSON array in the body, or a
string cut by the dimension's `split`. A header value with commas stays one value
unless the dimension says `split: ","`: `x-team: eng,ml` must not become two
memberships by accident. Inside a list, scalars become strings and nested objects or
lists are ignored.

An API key is never a value: its dimension resolves to `sha256:` and the first 16 hex
digits of the key's SHA-256, the name budget entries and `extproc spend` use for it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from google.protobuf.struct_pb2 import ListValue, Struct, Value

from extproc.config.model import Dimension, DimensionSource

BUILTIN_KEYS = frozenset({"model", "provider", "route"})

# One value, or several from a list-valued source.
DimensionValue = str | tuple[str, ...]

API_KEY_PREFIX = "sha256:"
_API_KEY_HEX_DIGITS = 16  # 64 bits: no collisions among any realistic number of keys
# A SigV4 signature changes with every request; the access key id in its credential
# scope is what stays the same for one caller.
_SIGV4_ACCESS_KEY = re.compile(r"^AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)/")


def resolve(
    dimensions: Mapping[str, Dimension],
    *,
    headers: Mapping[str, str],
    metadata: Mapping[str, Struct],
    attributes: Mapping[str, str],
    builtins: Mapping[str, str | None],
    body: bytes = b"",
) -> dict[str, DimensionValue]:
    """Every dimension that has a non-empty value for this request.

    `body` is the raw request body; it is parsed only when a body dimension is
    configured, and then once however many read it.
    """
    out: dict[str, DimensionValue] = {k: v for k, v in builtins.items() if v}
    request_body = _JsonBody(body)
    for key, dim in dimensions.items():
        raw: DimensionValue | None
        if dim.source is DimensionSource.HEADER:
            raw = headers.get(dim.name)
        elif dim.source is DimensionSource.ATTRIBUTE:
            raw = attributes.get(dim.name)
        elif dim.source is DimensionSource.METADATA:
            raw = metadata_value(metadata.get(dim.name), dim.path)
        elif dim.source is DimensionSource.BODY:
            raw = body_value(request_body.value(), dim.path)
        else:
            raw = api_key_id(headers.get(dim.name))
        value = _normalised(raw, dim.split)
        if value:
            out[key] = value
    return out


def metadata_value(struct: Struct | None, path: tuple[str, ...]) -> DimensionValue | None:
    """Walk a metadata Struct by keys: a scalar becomes a string, a list a tuple of its
    scalars as strings; anything else is missing."""
    if struct is None:
        return None
    current: Value | Struct = struct
    for part in path:
        fields = (
            current.fields
            if isinstance(current, Struct)
            else (current.struct_value.fields if current.HasField("struct_value") else None)
        )
        if fields is None or part not in fields:
            return None
        current = fields[part]
    if isinstance(current, Struct):
        return None
    if current.WhichOneof("kind") == "list_value":
        return _list_texts(current.list_value)
    return _value_text(current)


def body_value(obj: object, path: tuple[str, ...]) -> DimensionValue | None:
    """Walk a parsed JSON body by keys, as `metadata_value` walks a Struct."""
    current = obj
    for part in path:
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    if isinstance(current, list):
        texts = (_json_text(item) for item in current)
        return tuple(text for text in texts if text is not None)
    return _json_text(current)


def api_key_id(header_value: str | None) -> str | None:
    """Who holds an API key, never the key: `sha256:` and 16 hex digits of its SHA-256.

    A `Bearer ` prefix is stripped, so `Authorization: Bearer K` and `x-api-key: K` name
    the same caller; a SigV4 `Authorization` names its access key id.
    """
    if not header_value:
        return None
    key = header_value.strip()
    scheme, _, rest = key.partition(" ")
    if scheme.lower() == "bearer":
        key = rest.strip()
    else:
        sigv4 = _SIGV4_ACCESS_KEY.match(key)
        if sigv4:
            key = sigv4.group(1)
    if not key:
        return None
    return API_KEY_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:_API_KEY_HEX_DIGITS]


class _JsonBody:
    """A request body parsed on first use, at most once."""

    _UNREAD = object()

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._value: object = self._UNREAD

    def value(self) -> object:
        if self._value is self._UNREAD:
            try:
                self._value = json.loads(self._raw) if self._raw else None
            except (ValueError, RecursionError):  # not JSON (or not UTF-8): no body fields
                self._value = None
        return self._value


def _normalised(raw: DimensionValue | None, split: str | None) -> DimensionValue | None:
    """One string as it came, or several values sorted without repeats or empties."""
    if raw is None:
        return None
    if isinstance(raw, str) and split is None:
        return raw or None
    parts = (raw,) if isinstance(raw, str) else raw
    if split is not None:
        parts = tuple(piece.strip() for part in parts for piece in part.split(split))
    return tuple(sorted({part for part in parts if part})) or None


def _value_text(value: Value) -> str | None:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return _number_text(value.number_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    return None


def _list_texts(values: ListValue) -> tuple[str, ...]:
    texts = (_value_text(item) for item in values.values)
    return tuple(text for text in texts if text is not None)


def _json_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number_text(value)
    return None


def _number_text(n: float) -> str:
    return str(int(n)) if n.is_integer() else str(n)
