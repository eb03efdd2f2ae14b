"""Resolving a request's dimension values: the subject keys budgets match on.

Sources are configured once (`BudgetDimensions`); this module only reads what the
request carries. An empty value counts as missing.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.struct_pb2 import Struct, Value

from extproc.config.model import Dimension, DimensionSource

BUILTIN_KEYS = frozenset({"model", "provider", "route"})


def resolve(
    dimensions: Mapping[str, Dimension],
    *,
    headers: Mapping[str, str],
    metadata: Mapping[str, Struct],
    attributes: Mapping[str, str],
    builtins: Mapping[str, str | None],
) -> dict[str, str]:
    """Every dimension that has a non-empty value for this request."""
    out: dict[str, str] = {k: v for k, v in builtins.items() if v}
    for key, dim in dimensions.items():
        value: str | None
        if dim.source is DimensionSource.HEADER:
            value = headers.get(dim.name)
        elif dim.source is DimensionSource.ATTRIBUTE:
            value = attributes.get(dim.name)
        else:
            value = metadata_value(metadata.get(dim.name), dim.path)
        if value:
            out[key] = value
    return out


def metadata_value(struct: Struct | None, path: tuple[str, ...]) -> str | None:
    """Walk a metadata Struct by keys; scalars become strings, anything else is missing."""
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
    kind = current.WhichOneof("kind")
    if kind == "string_value":
        return current.string_value
    if kind == "number_value":
        n = current.number_value
        return str(int(n)) if n.is_integer() else str(n)
    if kind == "bool_value":
        return "true" if current.bool_value else "false"
    return None
