"""BudgetDimensions: where each subject key's value comes from in a request."""

from __future__ import annotations

import dataclasses
import re

from extproc.config.documents import Map, Node, join
from extproc.config.fields import Reporter
from extproc.config.kinds.base import DimensionClaim, Fragment, Meta
from extproc.config.kinds.budgets import subject_text_problem
from extproc.config.model import API_KEY_HEADERS, Dimension, DimensionSource

__all__ = ["parse_dimensions"]

_BUILT_IN_DIMENSIONS = ("model", "provider", "route")
_SPLIT = "split"
_HEADER_NAME = re.compile(r"^:?[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token; `:` for pseudo-headers


def parse_dimensions(r: Reporter, doc: Map, meta: Meta, out: Fragment) -> None:
    """BudgetDimensions: how each subject key resolves per request (sidecar-wide)."""
    spec = r.mapping(r.get(doc, "spec", "", required=True), "spec")
    r.only(spec, "spec", ("dimensions",))
    dimensions = r.mapping(r.get(spec, "dimensions", "spec", required=True), "spec.dimensions")
    if dimensions is None:
        return
    for key, node in dimensions.fields.items():
        path, line = join("spec.dimensions", key), dimensions.key_lines[key]
        if key in _BUILT_IN_DIMENSIONS:
            r.add(line, path, f'"{key}" is built in and cannot be redefined')
            continue
        key_problem = subject_text_problem(key, "a dimension key")
        if key_problem:
            r.add(line, path, key_problem)
            continue
        # Whether another resource defines the key too is checked when resources meet.
        out.dimensions.append(DimensionClaim(key, line, path, _dimension(r, key, node, path)))


def _dimension(r: Reporter, key: str, node: Node, path: str) -> Dimension | None:
    spec = r.mapping(node, path)
    if spec is None:
        return None
    sources = [source.value for source in DimensionSource]
    r.only(spec, path, [*sources, _SPLIT])
    given = [source for source in sources if source in spec.fields]
    if len(given) != 1:
        r.add(spec.line, path, f"set exactly one of: {', '.join(sources)}")
        return None
    source = DimensionSource(given[0])
    source_path = f"{path}.{source.value}"
    before = r.count()
    split = _split(r, spec, path, source)
    value = r.get(spec, source.value, path, required=True)
    dimension: Dimension | None
    if source is DimensionSource.API_KEY:
        dimension = _api_key_dimension(r, key, value, source_path)
    elif source is DimensionSource.METADATA:
        dimension = _metadata_dimension(r, key, value, source_path)
    elif source is DimensionSource.BODY:
        keys = _field_path(r, value, source_path)
        dimension = None if keys is None else Dimension(key, source, "", keys)
    else:
        dimension = _named_dimension(r, key, source, value, source_path)
    if dimension is None or r.count() != before:
        return None
    return dataclasses.replace(dimension, split=split) if split is not None else dimension


def _split(r: Reporter, spec: Map, path: str, source: DimensionSource) -> str | None:
    """`split: ","`: the separator that cuts one string into several values."""
    node = r.get(spec, _SPLIT, path)
    if node is None:
        return None
    split_path = join(path, _SPLIT)
    if source is DimensionSource.API_KEY:
        r.add(spec.key_lines[_SPLIT], split_path, "an API key is one value and cannot be split")
        return None
    return r.string(node, split_path)


def _metadata_dimension(r: Reporter, key: str, value: Node | None, path: str) -> Dimension | None:
    metadata = r.mapping(value, path)
    r.only(metadata, path, ("namespace", "path"))
    namespace = r.string(r.get(metadata, "namespace", path, required=True), f"{path}.namespace")
    keys = _field_path(r, r.get(metadata, "path", path, required=True), f"{path}.path")
    if namespace is None or keys is None:
        return None
    return Dimension(key, DimensionSource.METADATA, namespace, keys)


def _field_path(r: Reporter, node: Node | None, path: str) -> tuple[str, ...] | None:
    """A path of object keys into a struct or a JSON body: `[jwt_payload, sub]`."""
    items = r.sequence(node, path)
    if items is None:
        return None
    if not items.items:
        r.add(items.line, path, "needs at least one key")
        return None
    keys = [r.string(item, f"{path}[{i}]") for i, item in enumerate(items.items)]
    if any(k is None for k in keys):
        return None
    return tuple(k for k in keys if k is not None)


def _api_key_dimension(r: Reporter, key: str, value: Node | None, path: str) -> Dimension | None:
    """`apiKey: {header: x-api-key}`; `apiKey: {}` reads `authorization`."""
    options = r.mapping(value, path)
    if options is None:
        return None
    r.only(options, path, ("header",))
    header_node = r.get(options, "header", path)
    header = API_KEY_HEADERS[0]
    if header_node is not None:
        given = r.string(header_node, f"{path}.header")
        if given is None:
            return None
        header = given.lower()
        if header not in API_KEY_HEADERS:
            r.add(
                header_node.line,
                f"{path}.header",
                f'"{given}" is not a header that carries an API key; expected one of: '
                f"{', '.join(API_KEY_HEADERS)}",
            )
            return None
    return Dimension(key, DimensionSource.API_KEY, header)


def _named_dimension(
    r: Reporter, key: str, source: DimensionSource, value: Node | None, path: str
) -> Dimension | None:
    """A header or attribute dimension: a name."""
    name = r.string(value, path)
    if name is None or value is None:
        return None
    if source is DimensionSource.HEADER:
        if not _HEADER_NAME.match(name):
            r.add(value.line, path, f'"{name}" is not an HTTP header name')
            return None
        name = name.lower()  # Envoy hands ext_proc header names in lower case
    return Dimension(key, source, name)
