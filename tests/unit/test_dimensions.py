"""Resolving dimension values from headers, Envoy metadata, attributes, the body and API keys (pure)."""

from __future__ import annotations

import hashlib
import json

import pytest
from google.protobuf.struct_pb2 import Struct

from extproc import dimensions
from extproc.config.model import Dimension, DimensionSource
from extproc.dimensions import api_key_id, body_value, metadata_value, resolve

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
    assert metadata_value(s, ("list",)) == ("1", "2")
    assert metadata_value(s, ("obj",)) is None
    assert metadata_value(s, ("a", "missing")) is None
    assert metadata_value(s, ("n", "below-a-scalar")) is None
    assert metadata_value(None, ("a",)) is None


JWT = "envoy.filters.http.jwt_authn"


def only(dim: Dimension, **request: object) -> object:
    """The value one dimension resolves to, or None."""
    args: dict[str, object] = {"headers": {}, "metadata": {}, "attributes": {}, "builtins": {}, **request}
    return resolve({dim.key: dim}, **args).get(dim.key)  # type: ignore[arg-type]


def test_a_list_valued_claim_resolves_to_its_distinct_values_sorted() -> None:
    groups = Dimension("group", DimensionSource.METADATA, JWT, ("jwt_payload", "groups"))
    payload = {"groups": ["ml", "eng", "", "ml", 7, True, {"nested": "object"}, ["nested", "list"], None]}
    assert only(groups, metadata={JWT: jwt(payload)}) == ("7", "eng", "ml", "true")


def test_an_empty_list_or_one_of_only_objects_counts_as_missing() -> None:
    groups = Dimension("group", DimensionSource.METADATA, JWT, ("jwt_payload", "groups"))
    assert only(groups, metadata={JWT: jwt({"groups": []})}) is None
    assert only(groups, metadata={JWT: jwt({"groups": [{"a": 1}, ""]})}) is None


def test_a_header_with_commas_is_one_value_unless_the_dimension_splits_it() -> None:
    plain = Dimension("team", DimensionSource.HEADER, "x-teams")
    split = Dimension("team", DimensionSource.HEADER, "x-teams", split=",")
    assert only(plain, headers={"x-teams": "eng, ml"}) == "eng, ml"
    assert only(split, headers={"x-teams": "eng, ml,,eng "}) == ("eng", "ml")
    assert only(split, headers={"x-teams": " , "}) is None


def test_split_also_cuts_a_string_claim_such_as_oauth_scopes() -> None:
    scopes = Dimension("scope", DimensionSource.METADATA, JWT, ("jwt_payload", "scope"), split=" ")
    assert only(scopes, metadata={JWT: jwt({"scope": "read  write"})}) == ("read", "write")


def test_body_fields_resolve_openai_user_and_anthropic_metadata_user_id() -> None:
    user = Dimension("user", DimensionSource.BODY, "", ("user",))
    nested = Dimension("user", DimensionSource.BODY, "", ("metadata", "user_id"))
    assert only(user, body=json.dumps({"model": "gpt-4o", "user": "alice"}).encode()) == "alice"
    assert only(nested, body=json.dumps({"metadata": {"user_id": "u-42"}}).encode()) == "u-42"
    assert only(nested, body=b'{"metadata": "not an object"}') is None
    assert only(user, body=b'{"user": ""}') is None
    assert only(user, body=b"not json") is None
    assert only(user, body=b"\xff\xfe") is None
    assert only(user, body=b"") is None


def test_body_values_are_stringified_like_metadata_values() -> None:
    obj = json.loads('{"n": 42, "f": 1.5, "big": 1e3, "t": false, "tags": ["b", 1, {"x": 1}], "o": {}}')
    assert body_value(obj, ("n",)) == "42"
    assert body_value(obj, ("f",)) == "1.5"
    assert body_value(obj, ("big",)) == "1000"
    assert body_value(obj, ("t",)) == "false"
    assert body_value(obj, ("tags",)) == ("b", "1")
    assert body_value(obj, ("o",)) is None
    assert body_value([1, 2], ("n",)) is None


def test_the_body_is_parsed_once_and_only_when_a_body_dimension_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    loads = json.loads

    def counting_loads(raw: bytes) -> object:
        calls.append(raw)
        return loads(raw)

    monkeypatch.setattr(dimensions.json, "loads", counting_loads)
    body = b'{"user": "alice", "metadata": {"user_id": "u-1"}}'
    no_body_dims = {"group": Dimension("group", DimensionSource.HEADER, "x-team")}
    resolve(no_body_dims, headers={}, metadata={}, attributes={}, builtins={}, body=body)
    assert calls == []
    two = {
        "user": Dimension("user", DimensionSource.BODY, "", ("user",)),
        "uid": Dimension("uid", DimensionSource.BODY, "", ("metadata", "user_id")),
    }
    dims = resolve(two, headers={}, metadata={}, attributes={}, builtins={}, body=body)
    assert dims == {"user": "alice", "uid": "u-1"}
    assert calls == [body]


def test_an_api_key_resolves_to_a_short_hash_never_the_key() -> None:
    key = "sk-proj-abcdefghijklmnop"
    expected = "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    bearer = Dimension("key", DimensionSource.API_KEY, "authorization")
    x_api_key = Dimension("key", DimensionSource.API_KEY, "x-api-key")
    value = only(bearer, headers={"authorization": f"Bearer {key}"})
    assert value == expected
    assert key not in str(value)
    # The same key through another header (or another scheme spelling) is the same caller.
    assert only(x_api_key, headers={"x-api-key": key}) == expected
    assert only(bearer, headers={"authorization": f"bearer  {key} "}) == expected
    assert only(bearer, headers={"authorization": "Bearer other"}) != expected


def test_an_empty_or_absent_api_key_counts_as_missing() -> None:
    assert api_key_id(None) is None
    assert api_key_id("") is None
    assert api_key_id("Bearer ") is None
    assert api_key_id("   ") is None


def test_a_sigv4_authorization_names_its_access_key_not_the_per_request_signature() -> None:
    def sigv4(date: str, signature: str) -> str:
        return (
            f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{date}/us-east-1/bedrock/aws4_request, "
            f"SignedHeaders=host;x-amz-date, Signature={signature}"
        )

    first = api_key_id(sigv4("20250101", "abc"))
    assert first == api_key_id(sigv4("20250102", "def")) == api_key_id("AKIDEXAMPLE")
    assert first != api_key_id(
        "AWS4-HMAC-SHA256 Credential=AKIDOTHER/20250101/us-east-1/bedrock/aws4_request, Signature=abc"
    )
