"""Resolving dimension values from headers, Envoy metadata and attributes (pure)."""

from __future__ import annotations

from google.protobuf.struct_pb2 import Struct

from extproc.config.model import Dimension, DimensionSource
from extproc.dimensions import metadata_value, resolve

DIMS = {
    "group": Dimension("group", DimensionSource.HEADER, "x-team"),
    "user": Dimension(
        "user", DimensionSource.METADATA, "envoy.filters.http.jwt_authn", ("jwt_payload", "sub")
    ),
    "client": Dimension("client", DimensionSource.ATTRIBUTE, "source.address"),
}


def jwt(payload: dict[str, object]) -> Struct:
    s = Struct()
    s.update({"jwt_payload": payload})
    return s


def test_each_source_resolves_and_builtins_are_kept() -> None:
    dims = resolve(
        DIMS,
        headers={"x-team": "engineering"},
        metadata={"envoy.filters.http.jwt_authn": jwt({"sub": "alice", "groups": ["a", "b"]})},
        attributes={"source.address": "10.0.0.7:5555"},
        builtins={"model": "gpt-4o", "provider": "openai", "route": "budget-demo"},
    )
    assert dims == {
        "group": "engineering",
        "user": "alice",
        "client": "10.0.0.7:5555",
        "model": "gpt-4o",
        "provider": "openai",
        "route": "budget-demo",
    }


def test_empty_and_absent_values_count_as_missing() -> None:
    dims = resolve(
        DIMS,
        headers={"x-team": ""},
        metadata={},
        attributes={},
        builtins={"model": None, "provider": "openai", "route": ""},
    )
    assert dims == {"provider": "openai"}


def test_metadata_paths_walk_nested_structs_and_stringify_scalars() -> None:
    s = Struct()
    s.update({"a": {"b": {"c": "deep"}}, "n": 42, "f": 1.5, "t": True, "list": [1, 2], "obj": {"x": 1}})
    assert metadata_value(s, ("a", "b", "c")) == "deep"
    assert metadata_value(s, ("n",)) == "42"
    assert metadata_value(s, ("f",)) == "1.5"
    assert metadata_value(s, ("t",)) == "true"
    assert metadata_value(s, ("list",)) is None  # list-valued claims wait for their own issue
    assert metadata_value(s, ("obj",)) is None
    assert metadata_value(s, ("a", "missing")) is None
    assert metadata_value(s, ("n", "below-a-scalar")) is None
    assert metadata_value(None, ("a",)) is None
