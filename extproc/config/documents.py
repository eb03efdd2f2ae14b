"""Documents with line numbers: YAML or JSON text, or a Kubernetes object, as a small node tree.

YAML is parsed once with PyYAML's composer, which keeps each node's line, so every problem
found later can say `file:line`. The checks in `kinds/` then walk `Map`/`Seq`/`Scalar`
nodes and never see PyYAML. Objects read from the Kubernetes API have no lines: they are
converted with line 0 and reported by object and field path instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from extproc.config.fields import Reporter

__all__ = [
    "Map",
    "Node",
    "Scalar",
    "Seq",
    "describe",
    "from_object",
    "is_null",
    "join",
    "text_tree",
    "yaml_documents",
]

_NULL_TAG = "tag:yaml.org,2002:null"


@dataclass(slots=True)
class Scalar:
    line: int
    value: object  # as YAML/JSON typed it: None, str, int, float, bool, Decimal, date...
    text: str  # as written, so `team: 007` or `on: yes` keep their spelling where text is wanted


@dataclass(slots=True)
class Map:
    line: int
    fields: dict[str, Node]
    key_lines: dict[str, int]


@dataclass(slots=True)
class Seq:
    line: int
    items: list[Node]


Node = Scalar | Map | Seq


def is_null(node: Node) -> bool:
    return isinstance(node, Scalar) and node.value is None


def describe(node: Node) -> str:
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return "a list"
    if node.value is None:
        return "null"
    if isinstance(node.value, bool):
        return f"a boolean ({node.text})"
    if isinstance(node.value, str):
        return f'"{node.value}"'
    return node.text


def join(path: str, key: str) -> str:
    key = key or '""'  # an empty key must still show in the path
    return f"{path}.{key}" if path else key


class _YamlTree:
    """Converts one composed YAML document into the node tree, keeping each node's line."""

    def __init__(self, loader: yaml.SafeLoader, report: Reporter, line: int | None = None) -> None:
        self._loader = loader
        self._report = report
        # Embedded documents (a ConfigMap's catalog) report the line of the ConfigMap key.
        self._line = line
        # Aliases share a node: convert it once (no billion-laughs blow-up), and a
        # placeholder of None while converting catches an alias that contains itself.
        self._done: dict[int, Node | None] = {}

    def convert(self, node: yaml.Node, path: str = "", key_line: int | None = None) -> Node:
        # A mapping's value is placed at its key's line: `spec:` rather than the first
        # line inside it, which is where "spec.targetRefs: is required" belongs.
        line = self._line or key_line or node.start_mark.line + 1
        if id(node) in self._done:
            done = self._done[id(node)]
            if done is None:
                self._report.add(line, path, "an alias refers to the node that contains it")
                return Scalar(line, None, "")
            return done
        self._done[id(node)] = None
        result: Node
        if isinstance(node, yaml.MappingNode):
            result = self._mapping(node, path, line)
        elif isinstance(node, yaml.SequenceNode):
            result = Seq(line, [self.convert(item, f"{path}[{i}]") for i, item in enumerate(node.value)])
        else:
            result = self._scalar(node, path, line)
        self._done[id(node)] = result
        return result

    def _scalar(self, node: yaml.Node, path: str, line: int) -> Scalar:
        try:
            value = self._loader.construct_object(node)
        except Exception as error:  # the constructor lets e.g. date ValueErrors through
            self._report.add(line, path, f"cannot read value {node.value!r}: {_yaml_reason(error)}")
            value = node.value
        return Scalar(line, value, str(node.value))

    def _mapping(self, node: yaml.MappingNode, path: str, line: int) -> Map:
        own_keys = {id(key) for key, _ in node.value}
        try:
            self._loader.flatten_mapping(node)  # applies `<<` merge keys in place
        except yaml.YAMLError as error:
            self._report.add(line, path, _yaml_reason(error))
        fields: dict[str, Node] = {}
        key_lines: dict[str, int] = {}
        key_is_own: dict[str, bool] = {}
        for key_node, value_node in node.value:
            key_line = self._line or key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _NULL_TAG:
                self._report.add(key_line, path, "mapping keys must be strings")
                continue
            key = str(key_node.value)
            own = id(key_node) in own_keys
            if key in fields and own and key_is_own[key]:
                # PyYAML would silently keep the last one; a repeated key is almost always a typo.
                self._report.add(key_line, join(path, key), f"duplicate key (first at line {key_lines[key]})")
            fields[key] = self.convert(value_node, join(path, key), key_line)
            key_lines[key] = key_line
            key_is_own[key] = own
        return Map(line, fields, key_lines)


class _JsonObject(list[tuple[str, object]]):
    """`json.loads` hands objects over as pairs so that duplicate keys can be reported."""


def _from_json(value: object, line: int, path: str, report: Reporter) -> Node:
    if isinstance(value, _JsonObject):
        fields: dict[str, Node] = {}
        for key, item in value:
            if key in fields:
                report.add(line, join(path, key), "duplicate key")
            fields[key] = _from_json(item, line, join(path, key), report)
        return Map(line, fields, dict.fromkeys(fields, line))
    if isinstance(value, list):
        return Seq(line, [_from_json(item, line, f"{path}[{i}]", report) for i, item in enumerate(value)])
    return Scalar(line, value, _scalar_text(value))


def _scalar_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value)


def from_object(value: object, line: int = 0) -> Node:
    """A decoded JSON value (a Kubernetes object from the API server) as a node tree.

    Objects from the API have no lines; every node gets `line` and problems name the
    object and the field path instead. Keys are already unique in a decoded dict.
    """
    if isinstance(value, Mapping):
        fields = {str(key): from_object(item, line) for key, item in value.items()}
        return Map(line, fields, dict.fromkeys(fields, line))
    if isinstance(value, list | tuple):
        return Seq(line, [from_object(item, line) for item in value])
    if isinstance(value, float):
        # JSON numbers arrive as floats; Decimal(repr) keeps what was written ("0.1", not 0.1000...).
        value = Decimal(repr(value))
    return Scalar(line, value, _scalar_text(value))


def _yaml_reason(error: BaseException) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        reason = error.problem or str(error)
        return f"{reason} ({error.context})" if error.context else reason
    if isinstance(error, yaml.reader.ReaderError) and isinstance(error.character, int):
        return f"{error.reason}: character #x{error.character:04x}"
    return str(error)


def _error_line(error: yaml.YAMLError, text: str) -> int:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        if mark is not None:
            return mark.line + 1
    if isinstance(error, yaml.reader.ReaderError):
        return text.count("\n", 0, error.position) + 1
    return 1


def yaml_documents(r: Reporter, text: str) -> list[Node]:
    """Every document of a YAML stream; those before a syntax error are still checked."""
    documents: list[Node] = []
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as error:  # the reader rejects control characters up front
        r.add(_error_line(error, text), "(yaml)", f"invalid YAML: {_yaml_reason(error)}")
        return documents
    try:
        while loader.check_node():
            documents.append(_YamlTree(loader, r).convert(loader.get_node()))
    except yaml.YAMLError as error:
        r.add(_error_line(error, text), "(yaml)", f"invalid YAML: {_yaml_reason(error)}")
    except RecursionError:
        r.add(loader.get_mark().line + 1, "(yaml)", "invalid YAML: nested too deeply")
    finally:
        loader.dispose()
    return documents


def text_tree(r: Reporter, text: str, line: int | None, what: str) -> Node | None:
    """One embedded document's text as a tree: YAML (which covers most JSON), else strict JSON.

    JSON is tried second because YAML gives line numbers; JSON covers what YAML 1.1
    refuses, such as tab indentation. None means a problem was reported. `what` names
    the expected content for the message about an empty text.
    """
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            tree = None if node is None else _YamlTree(loader, r, line).convert(node)
        finally:
            loader.dispose()
    except (yaml.YAMLError, RecursionError) as yaml_error:
        try:
            value = json.loads(text, object_pairs_hook=_JsonObject, parse_float=Decimal)
        except (ValueError, RecursionError):
            at = line or (_error_line(yaml_error, text) if isinstance(yaml_error, yaml.YAMLError) else 1)
            r.add(at, "", f"is neither valid YAML nor JSON: {_yaml_reason(yaml_error)}")
            return None
        tree = _from_json(value, line or 1, "", r)
    if tree is None or is_null(tree):
        r.add(line or 1, "", f"is empty; expected {what}")
        return None
    return tree
