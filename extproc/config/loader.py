"""Turns YAML files, folders and mounted ConfigMaps into one frozen `Config`.

This is the only place that validates. It reads every document, checks every field,
and either returns a complete `Config` or raises one `ConfigError` listing every
problem as `file:line: field.path: reason`, so an operator fixes a file in one pass
rather than one error per run. YAML is parsed once with PyYAML's composer, which keeps
each node's line; the checks then walk a small tree of `_Map`/`_Seq`/`_Scalar` nodes.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import yaml

from extproc.catalog.model import CatalogDocument, UserRates, UserTier
from extproc.config.errors import ConfigError, Problem
from extproc.config.model import (
    API_KEY_HEADERS,
    API_NAMES,
    NANOS_PER_USD,
    Action,
    BudgetEntry,
    BudgetResource,
    Config,
    Dimension,
    DimensionSource,
    DiscoveryMode,
    EnforcementPolicy,
    FailureMode,
    TargetRef,
    Unit,
    Window,
    frozen_map,
)

__all__ = ["ConfigError", "Problem", "load_config"]

_ENTERPRISE = "enterpriseagentgateway.solo.io/v1alpha1"
# The upstream docs show this group for the Parameters kind while the charts install the
# enterprise one (the field report's gotcha): accept both so either manifest loads.
_AGENTGATEWAY = "agentgateway.dev/v1alpha1"
_OURS = "budgets.extproc.dev/v1alpha1"
_CORE = "v1"

_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
_ENTRY_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The upstream CRD forbids these in subject keys and values; keeping them out leaves
# them free to delimit a subject inside a spend-store key.
_FORBIDDEN_CHARS = ("|", "^", "`")
_MAX_SUBJECT_KEYS = 16
_MAX_TOKENS = 2**32 - 1
# USD limits are compared in nano-dollars against Redis integers, which are signed 64-bit.
_MAX_USD = Decimal(2**63 - 1).scaleb(-9)
_NANO_DIGITS = len(str(NANOS_PER_USD)) - 1
_BUILT_IN_DIMENSIONS = ("model", "provider", "route")
_SPLIT = "split"
_HEADER_NAME = re.compile(r"^:?[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token; `:` for pseudo-headers
_GATEWAY_API_GROUP = "gateway.networking.k8s.io"
_NULL_TAG = "tag:yaml.org,2002:null"

_ENTRY_FIELDS = ("name", "subject", "limit", "window", "onBudgetExceeded")
_RATE_FIELDS = {
    "input": "input",
    "output": "output",
    "cacheRead": "cache_read",
    "cacheWrite": "cache_write",
    "reasoning": "reasoning",
}
_REQUIRED_RATES = ("input", "output")
_TIERS = "tiers"
_TIER_THRESHOLD = "inputTokensAbove"
_TIER_FIELDS = (_TIER_THRESHOLD, *_RATE_FIELDS)
# What a policy may say about how its routes' calls are read and priced.
_ROUTE_FIELDS = ("provider", "api", "estimateUsage")
_ENTERPRISE_FIELDS = ("discovery", "failureMode", *_ROUTE_FIELDS)
_POLICY_FIELDS = ("targetRefs", "discovery", "failureMode", *_ROUTE_FIELDS)

_E = TypeVar("_E", bound=enum.Enum)


# --- the node tree ------------------------------------------------------------------


@dataclass(slots=True)
class _Scalar:
    line: int
    value: object  # as YAML/JSON typed it: None, str, int, float, bool, Decimal, date...
    text: str  # as written, so `team: 007` or `on: yes` keep their spelling where text is wanted


@dataclass(slots=True)
class _Map:
    line: int
    fields: dict[str, _Node]
    key_lines: dict[str, int]


@dataclass(slots=True)
class _Seq:
    line: int
    items: list[_Node]


_Node = _Scalar | _Map | _Seq


def _is_null(node: _Node) -> bool:
    return isinstance(node, _Scalar) and node.value is None


def _describe(node: _Node) -> str:
    if isinstance(node, _Map):
        return "a mapping"
    if isinstance(node, _Seq):
        return "a list"
    if node.value is None:
        return "null"
    if isinstance(node.value, bool):
        return f"a boolean ({node.text})"
    if isinstance(node.value, str):
        return f'"{node.value}"'
    return node.text


def _join(path: str, key: str) -> str:
    key = key or '""'  # an empty key must still show in the path
    return f"{path}.{key}" if path else key


class _YamlTree:
    """Converts one composed YAML document into the node tree, keeping each node's line."""

    def __init__(self, loader: yaml.SafeLoader, report: _Reporter, line: int | None = None) -> None:
        self._loader = loader
        self._report = report
        # Embedded documents (a ConfigMap's catalog) report the line of the ConfigMap key.
        self._line = line
        # Aliases share a node: convert it once (no billion-laughs blow-up), and a
        # placeholder of None while converting catches an alias that contains itself.
        self._done: dict[int, _Node | None] = {}

    def convert(self, node: yaml.Node, path: str = "", key_line: int | None = None) -> _Node:
        # A mapping's value is placed at its key's line: `spec:` rather than the first
        # line inside it, which is where "spec.targetRefs: is required" belongs.
        line = self._line or key_line or node.start_mark.line + 1
        if id(node) in self._done:
            done = self._done[id(node)]
            if done is None:
                self._report.add(line, path, "an alias refers to the node that contains it")
                return _Scalar(line, None, "")
            return done
        self._done[id(node)] = None
        result: _Node
        if isinstance(node, yaml.MappingNode):
            result = self._mapping(node, path, line)
        elif isinstance(node, yaml.SequenceNode):
            result = _Seq(line, [self.convert(item, f"{path}[{i}]") for i, item in enumerate(node.value)])
        else:
            result = self._scalar(node, path, line)
        self._done[id(node)] = result
        return result

    def _scalar(self, node: yaml.Node, path: str, line: int) -> _Scalar:
        try:
            value = self._loader.construct_object(node)
        except Exception as error:  # the constructor lets e.g. date ValueErrors through
            self._report.add(line, path, f"cannot read value {node.value!r}: {_yaml_reason(error)}")
            value = node.value
        return _Scalar(line, value, str(node.value))

    def _mapping(self, node: yaml.MappingNode, path: str, line: int) -> _Map:
        own_keys = {id(key) for key, _ in node.value}
        try:
            self._loader.flatten_mapping(node)  # applies `<<` merge keys in place
        except yaml.YAMLError as error:
            self._report.add(line, path, _yaml_reason(error))
        fields: dict[str, _Node] = {}
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
                self._report.add(
                    key_line, _join(path, key), f"duplicate key (first at line {key_lines[key]})"
                )
            fields[key] = self.convert(value_node, _join(path, key), key_line)
            key_lines[key] = key_line
            key_is_own[key] = own
        return _Map(line, fields, key_lines)


class _JsonObject(list[tuple[str, object]]):
    """`json.loads` hands objects over as pairs so that duplicate keys can be reported."""


def _from_json(value: object, line: int, path: str, report: _Reporter) -> _Node:
    if isinstance(value, _JsonObject):
        fields: dict[str, _Node] = {}
        for key, item in value:
            if key in fields:
                report.add(line, _join(path, key), "duplicate key")
            fields[key] = _from_json(item, line, _join(path, key), report)
        return _Map(line, fields, dict.fromkeys(fields, line))
    if isinstance(value, list):
        return _Seq(line, [_from_json(item, line, f"{path}[{i}]", report) for i, item in enumerate(value)])
    text = (
        value if isinstance(value, str) else str(value) if isinstance(value, Decimal) else json.dumps(value)
    )
    return _Scalar(line, value, text)


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


# --- reporting and typed field access -----------------------------------------------


class _Reporter:
    """Where one file's problems go: each check adds one and carries on.

    Its accessors return None for a wrong or missing value (having reported it), so
    a parser can check every field before deciding whether it can build its object.
    """

    def __init__(self, file: str, sink: list[Problem], base: str = "", separator: str = ".") -> None:
        self.file = file
        self._sink = sink
        # A document nested in another (a `List` item, a ConfigMap's catalog) reports its
        # paths under the outer one's, e.g. `data.catalog.json: providers.openai`.
        self._base = base
        self._separator = separator

    def nested(self, base: str, separator: str = ".") -> _Reporter:
        joined = f"{self._base}{self._separator}{base}" if self._base else base
        return _Reporter(self.file, self._sink, joined, separator)

    def add(self, line: int, path: str, reason: str) -> None:
        reason = " ".join(reason.split())  # one problem, one output line, whatever a value holds
        if self._base:
            path = f"{self._base}{self._separator}{path}" if path else self._base
        self._sink.append(Problem(self.file, line, path or "(document)", reason))

    def count(self) -> int:
        """How many problems so far: a parser compares before and after to know if a part is valid."""
        return len(self._sink)

    def site(self, line: int) -> str:
        return f"{self.file}:{line}"

    def get(self, parent: _Map | None, key: str, path: str, *, required: bool = False) -> _Node | None:
        """A field's node; absent and null are the same, as `kubectl apply` treats them."""
        if parent is None:
            return None
        node = parent.fields.get(key)
        if node is None or _is_null(node):
            if required:
                line = parent.key_lines[key] if node is not None else parent.line
                self.add(line, _join(path, key), "is required")
            return None
        return node

    def only(self, parent: _Map | None, path: str, allowed: Sequence[str]) -> None:
        """Rejects fields we do not know, which are most often typos of ones we do."""
        if parent is None:
            return
        for key in parent.fields:
            if key in allowed:
                continue
            guess = difflib.get_close_matches(key, allowed, n=1)
            hint = f' (did you mean "{guess[0]}"?)' if guess else ""
            self.add(
                parent.key_lines[key],
                _join(path, key),
                f"unknown field{hint}; expected one of: {', '.join(allowed)}",
            )

    def mapping(self, node: _Node | None, path: str) -> _Map | None:
        if node is None or isinstance(node, _Map):
            return node
        self.add(node.line, path, f"must be a mapping, got {_describe(node)}")
        return None

    def sequence(self, node: _Node | None, path: str) -> _Seq | None:
        if node is None or isinstance(node, _Seq):
            return node
        self.add(node.line, path, f"must be a list, got {_describe(node)}")
        return None

    def string(self, node: _Node | None, path: str) -> str | None:
        if node is None:
            return None
        if isinstance(node, _Scalar) and isinstance(node.value, str):
            if node.value:
                return node.value
            self.add(node.line, path, "must not be empty")
            return None
        self.add(node.line, path, f"must be a string, got {_describe(node)}")
        return None

    def text(self, node: _Node, path: str) -> str | None:
        """A scalar as the string it spells: where only text makes sense, `5` means "5"."""
        if isinstance(node, _Scalar) and node.value is not None:
            return node.value if isinstance(node.value, str) else node.text
        self.add(node.line, path, f"must be a string, got {_describe(node)}")
        return None

    def text_map(self, node: _Node | None, path: str) -> dict[str, str] | None:
        """A string-to-string map such as labels; absent is empty, None means invalid."""
        if node is None:
            return {}
        parent = self.mapping(node, path)
        if parent is None:
            return None
        result: dict[str, str] = {}
        valid = True
        for key, value in parent.fields.items():
            text = self.text(value, _join(path, key))
            if text is None:
                valid = False
            else:
                result[key] = text
        return result if valid else None

    def one_of(self, node: _Node | None, path: str, allowed: Sequence[str], what: str) -> str | None:
        if node is None:
            return None
        if isinstance(node, _Scalar) and isinstance(node.value, str) and node.value in allowed:
            return node.value
        expected = ", ".join(allowed)
        if isinstance(node, _Scalar) and node.value is not None:
            self.add(node.line, path, f"unknown {what} {_describe(node)}; expected one of: {expected}")
        else:
            self.add(node.line, path, f"must be one of: {expected}; got {_describe(node)}")
        return None

    def choice(self, node: _Node | None, path: str, enum_type: type[_E], what: str) -> _E | None:
        members = {member.value: member for member in enum_type}
        value = self.one_of(node, path, list(members), what)
        return None if value is None else members[value]

    def boolean(self, node: _Node | None, path: str) -> bool | None:
        if node is None:
            return None
        if isinstance(node, _Scalar) and isinstance(node.value, bool):
            return node.value
        self.add(node.line, path, f"must be true or false, got {_describe(node)}")
        return None

    def decimal(self, node: _Node | None, path: str) -> Decimal | None:
        """A number written as a number or a string ("0.50"), kept exact as a Decimal."""
        if node is None:
            return None
        # bool is an int to Python, but `amount: yes` is no number.
        if (
            isinstance(node, _Scalar)
            and isinstance(node.value, int | float | Decimal | str)
            and not isinstance(node.value, bool)
        ):
            try:
                number = Decimal(str(node.value).strip())
            except InvalidOperation:
                pass
            else:
                if number.is_finite():
                    return number
        self.add(node.line, path, f"must be a number, got {_describe(node)}")
        return None


# --- the resources ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Meta:
    name: str
    namespace: str
    labels: dict[str, str]
    line: int  # of metadata.name, where a duplicate is reported


@dataclass(slots=True)
class _ConfigMap:
    data: _Map | None
    report: _Reporter


@dataclass(frozen=True, slots=True)
class _CatalogRef:
    """A Parameters resource's `configMap` source, resolved once every file is read."""

    namespace: str
    name: str
    key: str
    report: _Reporter
    line: int
    key_line: int
    path: str


@dataclass(slots=True)
class _Collected:
    """What the documents add up to, across every file."""

    budgets: list[BudgetResource] = field(default_factory=list)
    policies: list[EnforcementPolicy] = field(default_factory=list)
    dimensions: dict[str, Dimension] = field(default_factory=dict)
    dimension_sites: dict[str, str] = field(default_factory=dict)
    config_maps: dict[tuple[str, str], _ConfigMap] = field(default_factory=dict)
    catalog_refs: list[_CatalogRef] = field(default_factory=list)
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    namespace_sites: dict[str, str] = field(default_factory=dict)
    resources: dict[tuple[str, str, str], str] = field(default_factory=dict)


def _metadata(r: _Reporter, doc: _Map) -> _Meta | None:
    meta = r.mapping(r.get(doc, "metadata", "", required=True), "metadata")
    if meta is None:
        return None
    name_node = r.get(meta, "name", "metadata", required=True)
    name = r.string(name_node, "metadata.name")
    namespace_node = r.get(meta, "namespace", "metadata")
    namespace = "default" if namespace_node is None else r.string(namespace_node, "metadata.namespace")
    labels = r.text_map(r.get(meta, "labels", "metadata"), "metadata.labels")
    if name is None or name_node is None or namespace is None or labels is None:
        return None
    return _Meta(name, namespace, labels, name_node.line)


def _budget(r: _Reporter, doc: _Map, meta: _Meta, acc: _Collected) -> None:
    spec = r.mapping(r.get(doc, "spec", "", required=True), "spec")
    budgets = r.sequence(r.get(spec, "budgets", "spec", required=True), "spec.budgets")
    if budgets is None:
        return
    entries: list[BudgetEntry] = []
    first_lines: dict[str, int] = {}
    for i, item in enumerate(budgets.items):
        path = f"spec.budgets[{i}]"
        entry = _budget_entry(r, item, path, meta)
        name_node = item.fields.get("name") if isinstance(item, _Map) else None
        name = name_node.value if isinstance(name_node, _Scalar) else None
        if name_node is not None and isinstance(name, str):
            if name in first_lines:
                r.add(
                    name_node.line,
                    f"{path}.name",
                    f'duplicate entry name "{name}" (first at line {first_lines[name]})',
                )
                continue
            first_lines[name] = name_node.line
        if entry is not None:
            entries.append(entry)
    acc.budgets.append(BudgetResource(meta.namespace, meta.name, tuple(entries), frozen_map(meta.labels)))


def _budget_entry(r: _Reporter, node: _Node, path: str, meta: _Meta) -> BudgetEntry | None:
    entry = r.mapping(node, path)
    if entry is None:
        return None
    r.only(entry, path, _ENTRY_FIELDS)
    name = _entry_name(r, r.get(entry, "name", path, required=True), f"{path}.name")
    subject = _subject(r, r.get(entry, "subject", path), f"{path}.subject")
    limit = _limit(r, r.get(entry, "limit", path, required=True), f"{path}.limit")
    window_map = r.mapping(r.get(entry, "window", path, required=True), f"{path}.window")
    r.only(window_map, f"{path}.window", ("unit",))
    window = r.choice(
        r.get(window_map, "unit", f"{path}.window", required=True), f"{path}.window.unit", Window, "window"
    )
    action_node = r.get(entry, "onBudgetExceeded", path, required=True)
    action = r.choice(action_node, f"{path}.onBudgetExceeded", Action, "action")
    if name is None or subject is None or limit is None or window is None or action is None:
        return None
    unit, amount = limit
    return BudgetEntry(meta.namespace, meta.name, name, unit, amount, window, action, frozen_map(subject))


def _entry_name(r: _Reporter, node: _Node | None, path: str) -> str | None:
    name = r.string(node, path)
    if name is None or node is None:
        return None
    if not _ENTRY_NAME.match(name):
        r.add(
            node.line,
            path,
            f'"{name}" must be lower-case letters, digits and hyphens, starting and ending alphanumeric',
        )
        return None
    return name


def _subject(r: _Reporter, node: _Node | None, path: str) -> dict[str, str] | None:
    """The entry's subject; no subject is {} (every request), None means invalid."""
    subject = r.mapping(node, path)
    if subject is None:
        return None if node is not None else {}
    valid = True
    if len(subject.fields) > _MAX_SUBJECT_KEYS:
        r.add(subject.line, path, f"at most {_MAX_SUBJECT_KEYS} subject keys, got {len(subject.fields)}")
        valid = False
    result: dict[str, str] = {}
    for key, value_node in subject.fields.items():
        key_path = _join(path, key)
        key_problem = _subject_text_problem(key, "a subject key")
        if key_problem:
            r.add(subject.key_lines[key], key_path, key_problem)
            valid = False
        value = r.text(value_node, key_path)
        if value is None:
            valid = False
            continue
        value_problem = _subject_text_problem(value, "a subject value")
        if value_problem:
            r.add(value_node.line, key_path, value_problem)
            valid = False
        result[key] = value
    return result if valid else None


def _subject_text_problem(text: str, what: str) -> str | None:
    if not text:
        return f"{what} must not be empty"
    found = [char for char in _FORBIDDEN_CHARS if char in text]
    if found:
        return f'{what} must not contain {", ".join(found)} (got "{text}")'
    return None


def _limit(r: _Reporter, node: _Node | None, path: str) -> tuple[Unit, Decimal] | None:
    limit = r.mapping(node, path)
    if limit is None:
        return None
    r.only(limit, path, ("unit", "amount"))
    unit = r.choice(r.get(limit, "unit", path, required=True), f"{path}.unit", Unit, "unit")
    amount_node = r.get(limit, "amount", path, required=True)
    amount = r.decimal(amount_node, f"{path}.amount")
    if amount is None or amount_node is None:
        return None
    line, amount_path = amount_node.line, f"{path}.amount"
    if amount <= 0:
        r.add(line, amount_path, f"must be positive, got {amount:f}")
        return None
    if unit is Unit.TOKENS:
        if amount != amount.to_integral_value():
            r.add(line, amount_path, f"a token limit must be a whole number, got {amount:f}")
        elif amount > _MAX_TOKENS:
            r.add(line, amount_path, f"a token limit is at most {_MAX_TOKENS} (2^32-1), got {amount:f}")
        else:
            return unit, Decimal(int(amount))
    elif unit is Unit.USD:
        if amount > _MAX_USD:
            r.add(line, amount_path, f"a USD limit is at most {_MAX_USD}, got {amount:f}")
        elif not _whole_nanos(amount):
            r.add(line, amount_path, f"a USD limit has at most {_NANO_DIGITS} decimal places, got {amount:f}")
        else:
            return unit, amount
    return None


def _whole_nanos(amount: Decimal) -> bool:
    """Exact, without rounding through a context: digits past the 9th decimal must be 0."""
    _, digits, exponent = amount.as_tuple()
    if not isinstance(exponent, int):  # NaN or infinity; the caller rejects those first
        return False
    extra = -exponent - _NANO_DIGITS
    return extra <= 0 or not any(digits[-extra:])


def _target_refs(r: _Reporter, parent: _Map | None, path: str, namespace: str) -> tuple[TargetRef, ...]:
    refs = r.sequence(r.get(parent, "targetRefs", path, required=True), _join(path, "targetRefs"))
    if refs is None:
        return ()
    path = _join(path, "targetRefs")
    if not refs.items:
        r.add(refs.line, path, "needs at least one HTTPRoute or Gateway")
    result: list[TargetRef] = []
    for i, item in enumerate(refs.items):
        item_path = f"{path}[{i}]"
        before = r.count()
        ref = r.mapping(item, item_path)
        if ref is None:
            continue
        r.only(ref, item_path, ("group", "kind", "name", "namespace", "sectionName"))
        if "sectionName" in ref.fields:
            # Enforcing a whole route when only a section was meant would block too much.
            r.add(
                ref.key_lines["sectionName"],
                f"{item_path}.sectionName",
                "is not supported: target a whole route",
            )
        r.one_of(r.get(ref, "group", item_path), f"{item_path}.group", [_GATEWAY_API_GROUP], "group")
        kinds = ["HTTPRoute", "Gateway"]
        kind = r.one_of(r.get(ref, "kind", item_path, required=True), f"{item_path}.kind", kinds, "kind")
        name = r.string(r.get(ref, "name", item_path, required=True), f"{item_path}.name")
        ns_node = r.get(ref, "namespace", item_path)
        ref_namespace = namespace if ns_node is None else r.string(ns_node, f"{item_path}.namespace")
        if kind and name and ref_namespace and r.count() == before:
            result.append(TargetRef(kind, name, ref_namespace))
    return tuple(result)


def _discovery(r: _Reporter, node: _Node | None, path: str) -> tuple[DiscoveryMode, dict[str, str]]:
    """`{from, selector: {matchLabels}}`, the shape of Gateway API's allowedRoutes.namespaces."""
    discovery = r.mapping(node, path)
    if discovery is None:
        return DiscoveryMode.SAME, {}
    r.only(discovery, path, ("from", "selector"))
    from_node = r.get(discovery, "from", path)
    mode = r.choice(from_node, f"{path}.from", DiscoveryMode, "discovery mode") or DiscoveryMode.SAME
    selector_node = r.get(discovery, "selector", path)
    selector = r.mapping(selector_node, f"{path}.selector")
    labels: dict[str, str] | None = {}
    if selector is not None:
        r.only(selector, f"{path}.selector", ("matchLabels", "matchExpressions"))
        if "matchExpressions" in selector.fields:
            r.add(
                selector.key_lines["matchExpressions"],
                f"{path}.selector.matchExpressions",
                "is not supported; use matchLabels",
            )
        labels = r.text_map(
            r.get(selector, "matchLabels", f"{path}.selector"), f"{path}.selector.matchLabels"
        )
        if mode is not DiscoveryMode.SELECTOR:
            # Silently ignoring it would discover other namespaces than the author meant.
            r.add(
                selector.line,
                f"{path}.selector",
                f"only applies when from is Selector (from is {mode.value})",
            )
    elif mode is DiscoveryMode.SELECTOR and from_node is not None:
        r.add(from_node.line, f"{path}.selector", "is required when from is Selector")
    return mode, labels or {}


def _enterprise_policy(r: _Reporter, doc: _Map, meta: _Meta, acc: _Collected) -> None:
    # The same kind carries many unrelated policies: only budget enforcement is ours.
    spec = doc.fields.get("spec")
    traffic = spec.fields.get("traffic") if isinstance(spec, _Map) else None
    enforcement = traffic.fields.get("entBudgetEnforcement") if isinstance(traffic, _Map) else None
    if enforcement is None or _is_null(enforcement) or not isinstance(spec, _Map):
        return
    path = "spec.traffic.entBudgetEnforcement"
    settings = r.mapping(enforcement, path)
    # The route settings are our extension: the upstream CRD has no such fields.
    r.only(settings, path, _ENTERPRISE_FIELDS)
    discovery_map = r.mapping(r.get(settings, "discovery", path), f"{path}.discovery")
    r.only(discovery_map, f"{path}.discovery", ("namespaces",))
    namespaces = r.get(discovery_map, "namespaces", f"{path}.discovery")
    mode, selector = _discovery(r, namespaces, f"{path}.discovery.namespaces")
    failure = r.choice(
        r.get(settings, "failureMode", path), f"{path}.failureMode", FailureMode, "failure mode"
    )
    route = _route_settings(r, settings, path)
    targets = _target_refs(r, spec, "spec", meta.namespace)
    acc.policies.append(_policy(meta, targets, mode, selector, failure, route))


def _budget_policy(r: _Reporter, doc: _Map, meta: _Meta, acc: _Collected) -> None:
    spec = r.mapping(r.get(doc, "spec", "", required=True), "spec")
    if spec is None:
        return
    r.only(spec, "spec", _POLICY_FIELDS)
    targets = _target_refs(r, spec, "spec", meta.namespace)
    mode, selector = _discovery(r, r.get(spec, "discovery", "spec"), "spec.discovery")
    failure = r.choice(r.get(spec, "failureMode", "spec"), "spec.failureMode", FailureMode, "failure mode")
    route = _route_settings(r, spec, "spec")
    acc.policies.append(_policy(meta, targets, mode, selector, failure, route))


def _policy(
    meta: _Meta,
    targets: tuple[TargetRef, ...],
    mode: DiscoveryMode,
    selector: dict[str, str],
    failure: FailureMode | None,
    route: _RouteSettings,
) -> EnforcementPolicy:
    return EnforcementPolicy(
        meta.namespace,
        meta.name,
        targets,
        mode,
        frozen_map(selector),
        failure or FailureMode.OPEN,
        route.provider,
        route.api,
        route.estimate_usage,
    )


@dataclass(frozen=True, slots=True)
class _RouteSettings:
    provider: str | None = None
    api: str | None = None
    estimate_usage: bool = False


def _route_settings(r: _Reporter, parent: _Map | None, path: str) -> _RouteSettings:
    """`provider`, `api` and `estimateUsage`: how the targeted routes' calls are read and priced."""
    provider = _provider(r, r.get(parent, "provider", path), _join(path, "provider"))
    api = r.one_of(r.get(parent, "api", path), _join(path, "api"), API_NAMES, "api")
    estimate = r.boolean(r.get(parent, "estimateUsage", path), _join(path, "estimateUsage"))
    return _RouteSettings(provider, api, bool(estimate))


def _provider(r: _Reporter, node: _Node | None, path: str) -> str | None:
    text = r.string(node, path)
    if text is None or node is None:
        return None
    # Lower-cased like the names path detection gives: it is also the value that budget
    # subjects on the built-in `provider` dimension are matched against.
    provider = text.strip().lower()
    problem = _subject_text_problem(provider, "a provider")
    if problem:
        r.add(node.line, path, problem)
        return None
    return provider


def _parameters(r: _Reporter, doc: _Map, meta: _Meta, acc: _Collected) -> None:
    # Parameters also configure the proxy's Deployment and more: only the catalog is ours.
    spec = doc.fields.get("spec")
    catalog = spec.fields.get("modelCatalog") if isinstance(spec, _Map) else None
    if catalog is None or _is_null(catalog):
        return
    path = "spec.modelCatalog"
    sources = r.sequence(r.get(r.mapping(catalog, path), "sources", path, required=True), f"{path}.sources")
    for i, item in enumerate(sources.items if sources else ()):
        source_path = f"{path}.sources[{i}]"
        source = r.mapping(item, source_path)
        r.only(source, source_path, ("configMap",))
        ref_path = f"{source_path}.configMap"
        ref = r.mapping(r.get(source, "configMap", source_path, required=True), ref_path)
        if ref is None:
            continue
        r.only(ref, ref_path, ("name", "key", "namespace"))
        name = r.string(r.get(ref, "name", ref_path, required=True), f"{ref_path}.name")
        key_node = r.get(ref, "key", ref_path, required=True)
        key = r.string(key_node, f"{ref_path}.key")
        ns_node = r.get(ref, "namespace", ref_path)
        namespace = meta.namespace if ns_node is None else r.string(ns_node, f"{ref_path}.namespace")
        if name and key and namespace and key_node:
            acc.catalog_refs.append(_CatalogRef(namespace, name, key, r, ref.line, key_node.line, ref_path))


def _config_map(r: _Reporter, doc: _Map, meta: _Meta, acc: _Collected) -> None:
    # Kept whole: whether a ConfigMap is a catalog is known only once every Parameters is read.
    data = r.mapping(r.get(doc, "data", ""), "data")
    acc.config_maps[(meta.namespace, meta.name)] = _ConfigMap(data, r)


def _namespace(r: _Reporter, doc: _Map, meta: _Meta, acc: _Collected) -> None:
    _label_namespace(r, meta.name, meta.labels, meta.line, "metadata.name", acc)


def _label_namespace(
    r: _Reporter, name: str, labels: dict[str, str], line: int, path: str, acc: _Collected
) -> None:
    # Kubernetes labels every namespace with its name; selectors written for a cluster
    # (`kubernetes.io/metadata.name: team-a`) then work the same from files.
    if name in acc.namespace_sites:
        r.add(line, path, f'namespace "{name}" is already labelled at {acc.namespace_sites[name]}')
        return
    acc.namespace_sites[name] = r.site(line)
    acc.namespace_labels[name] = {**labels, "kubernetes.io/metadata.name": name}


def _namespace_labels(r: _Reporter, doc: _Map, meta: _Meta, acc: _Collected) -> None:
    """`BudgetNamespaces`: namespace labels for Selector discovery without Namespace manifests."""
    spec = r.mapping(r.get(doc, "spec", "", required=True), "spec")
    r.only(spec, "spec", ("namespaces",))
    namespaces = r.mapping(r.get(spec, "namespaces", "spec", required=True), "spec.namespaces")
    if namespaces is None:
        return
    for name, node in namespaces.fields.items():
        path, line = _join("spec.namespaces", name), namespaces.key_lines[name]
        labels = r.text_map(node, path)
        if labels is not None:
            _label_namespace(r, name, labels, line, path, acc)


def _dimensions(r: _Reporter, doc: _Map, meta: _Meta, acc: _Collected) -> None:
    spec = r.mapping(r.get(doc, "spec", "", required=True), "spec")
    r.only(spec, "spec", ("dimensions",))
    dimensions = r.mapping(r.get(spec, "dimensions", "spec", required=True), "spec.dimensions")
    if dimensions is None:
        return
    for key, node in dimensions.fields.items():
        path, line = _join("spec.dimensions", key), dimensions.key_lines[key]
        if key in _BUILT_IN_DIMENSIONS:
            r.add(line, path, f'"{key}" is built in and cannot be redefined')
            continue
        key_problem = _subject_text_problem(key, "a dimension key")
        if key_problem:
            r.add(line, path, key_problem)
            continue
        if key in acc.dimension_sites:
            r.add(line, path, f'dimension "{key}" is already defined at {acc.dimension_sites[key]}')
            continue
        acc.dimension_sites[key] = r.site(line)
        dimension = _dimension(r, key, node, path)
        if dimension is not None:
            acc.dimensions[key] = dimension


def _dimension(r: _Reporter, key: str, node: _Node, path: str) -> Dimension | None:
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


def _split(r: _Reporter, spec: _Map, path: str, source: DimensionSource) -> str | None:
    """`split: ","`: the separator that cuts one string into several values."""
    node = r.get(spec, _SPLIT, path)
    if node is None:
        return None
    split_path = _join(path, _SPLIT)
    if source is DimensionSource.API_KEY:
        r.add(spec.key_lines[_SPLIT], split_path, "an API key is one value and cannot be split")
        return None
    return r.string(node, split_path)


def _metadata_dimension(r: _Reporter, key: str, value: _Node | None, path: str) -> Dimension | None:
    metadata = r.mapping(value, path)
    r.only(metadata, path, ("namespace", "path"))
    namespace = r.string(r.get(metadata, "namespace", path, required=True), f"{path}.namespace")
    keys = _field_path(r, r.get(metadata, "path", path, required=True), f"{path}.path")
    if namespace is None or keys is None:
        return None
    return Dimension(key, DimensionSource.METADATA, namespace, keys)


def _field_path(r: _Reporter, node: _Node | None, path: str) -> tuple[str, ...] | None:
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


def _api_key_dimension(r: _Reporter, key: str, value: _Node | None, path: str) -> Dimension | None:
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
    r: _Reporter, key: str, source: DimensionSource, value: _Node | None, path: str
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


def _catalog(r: _Reporter, root: _Node, source: str) -> CatalogDocument | None:
    """`{providers: {P: {models: {M: {rates: {...}}}}}}`, names lower-cased for lookup."""
    before = r.count()
    top = r.mapping(root, "")
    providers = r.mapping(r.get(top, "providers", "", required=True), "providers")
    if providers is None:
        return None
    result: dict[str, dict[str, UserRates]] = {}
    for provider_key, provider_node in providers.fields.items():
        provider_path = _join("providers", provider_key)
        provider = provider_key.lower()
        if provider in result:
            r.add(providers.key_lines[provider_key], provider_path, "is listed twice (names ignore case)")
            continue
        models_path = f"{provider_path}.models"
        provider_map = r.mapping(provider_node, provider_path)
        models = r.mapping(r.get(provider_map, "models", provider_path, required=True), models_path)
        rates_by_model = result.setdefault(provider, {})
        if models is None:
            continue
        seen: set[str] = set()
        for model_key, model_node in models.fields.items():
            model_path = _join(models_path, model_key)
            if model_key.lower() in seen:
                r.add(models.key_lines[model_key], model_path, "is listed twice (names ignore case)")
                continue
            seen.add(model_key.lower())
            model = r.mapping(model_node, model_path)
            rates = _rates(r, r.get(model, "rates", model_path, required=True), model_path)
            if rates is not None:
                rates_by_model[model_key.lower()] = rates
    if r.count() > before:
        return None
    frozen = {provider: MappingProxyType(models) for provider, models in result.items()}
    return CatalogDocument(source, MappingProxyType(frozen))


def _rates(r: _Reporter, node: _Node | None, model_path: str) -> UserRates | None:
    path = f"{model_path}.rates"
    rates = r.mapping(node, path)
    if rates is None:
        return None
    r.only(rates, path, [*_RATE_FIELDS, _TIERS])
    before = r.count()
    values = _rate_values(r, rates, path)
    tiers = _tiers(r, r.get(rates, _TIERS, path), _join(path, _TIERS))
    if r.count() > before:
        return None
    return UserRates(
        input=values["input"],
        output=values["output"],
        cache_read=values.get("cache_read"),
        cache_write=values.get("cache_write"),
        reasoning=values.get("reasoning"),
        tiers=tiers,
    )


def _rate_values(r: _Reporter, rates: _Map, path: str) -> dict[str, Decimal]:
    """The rates stated in `rates`, by attribute name; the caller counts problems."""
    values: dict[str, Decimal] = {}
    for name, attribute in _RATE_FIELDS.items():
        rate_node = r.get(rates, name, path, required=name in _REQUIRED_RATES)
        rate = r.decimal(rate_node, _join(path, name))
        if rate is None or rate_node is None:
            continue
        if rate < 0:
            r.add(rate_node.line, _join(path, name), f"a rate must not be negative, got {rate:f}")
        values[attribute] = rate
    return values


def _tiers(r: _Reporter, node: _Node | None, path: str) -> tuple[UserTier, ...]:
    """Long-context tiers, sorted by threshold; each states its own input and output."""
    items = r.sequence(node, path)
    if items is None:
        return ()
    tiers: list[UserTier] = []
    first: dict[int, str] = {}  # threshold -> the path of the tier that set it first
    for i, item in enumerate(items.items):
        item_path = f"{path}[{i}]"
        tier = r.mapping(item, item_path)
        if tier is None:
            continue
        r.only(tier, item_path, _TIER_FIELDS)
        before = r.count()
        threshold_node = r.get(tier, _TIER_THRESHOLD, item_path, required=True)
        threshold = _threshold(r, threshold_node, _join(item_path, _TIER_THRESHOLD))
        values = _rate_values(r, tier, item_path)
        if threshold is not None and threshold_node is not None:
            if threshold in first:
                # Two prices for the same calls: which was meant cannot be guessed.
                r.add(
                    threshold_node.line,
                    _join(item_path, _TIER_THRESHOLD),
                    f"{threshold} is already the threshold of {first[threshold]}",
                )
            else:
                first[threshold] = item_path
        if threshold is not None and r.count() == before:
            tiers.append(UserTier(threshold, **values))
    return tuple(sorted(tiers, key=lambda tier: tier.input_tokens_above))


def _threshold(r: _Reporter, node: _Node | None, path: str) -> int | None:
    number = r.decimal(node, path)
    if number is None or node is None:
        return None
    if number != number.to_integral_value() or number <= 0:
        r.add(node.line, path, f"must be a positive whole number of input tokens, got {number:f}")
        return None
    if number > _MAX_TOKENS:  # checked before int(), which `1e999999999` would make huge
        r.add(node.line, path, f"is at most {_MAX_TOKENS} (2^32-1), got {number:f}")
        return None
    return int(number)


def _catalog_tree(r: _Reporter, text: str, line: int | None) -> _Node | None:
    """A catalog's text as a tree: YAML (which covers most JSON), else strict JSON.

    JSON is tried second because YAML gives line numbers; JSON covers what YAML 1.1
    refuses, such as tab indentation. None means a problem was reported.
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
    if tree is None or _is_null(tree):
        r.add(line or 1, "", "is empty; expected a catalog with providers")
        return None
    return tree


def _resolve_catalogs(acc: _Collected) -> list[CatalogDocument]:
    """The ConfigMaps that Parameters resources name, parsed as catalogs in the order named."""
    documents: list[CatalogDocument] = []
    seen: set[str] = set()
    for ref in acc.catalog_refs:
        source = f"{ref.namespace}/{ref.name}:{ref.key}"
        if source in seen:
            continue
        seen.add(source)
        config_map = acc.config_maps.get((ref.namespace, ref.name))
        if config_map is None:
            ref.report.add(
                ref.line, ref.path, f'ConfigMap "{ref.namespace}/{ref.name}" is not in the configuration'
            )
            continue
        value = config_map.data.fields.get(ref.key) if config_map.data else None
        if value is None:
            ref.report.add(
                ref.key_line,
                f"{ref.path}.key",
                f'ConfigMap "{ref.namespace}/{ref.name}" has no key "{ref.key}"',
            )
            continue
        data_path = f"data.{ref.key}"
        if not isinstance(value, _Scalar) or not isinstance(value.value, str):
            config_map.report.add(
                value.line, data_path, f"must be the catalog as JSON or YAML text, got {_describe(value)}"
            )
            continue
        report = config_map.report.nested(data_path, ": ")
        tree = _catalog_tree(report, value.value, value.line)
        document = _catalog(report, tree, source) if tree is not None else None
        if document is not None:
            documents.append(document)
    return documents


# --- documents and files ------------------------------------------------------------

_Handler = Callable[[_Reporter, _Map, _Meta, _Collected], None]

_KINDS: dict[tuple[str, str], _Handler] = {
    (_ENTERPRISE, "EnterpriseAgentgatewayBudget"): _budget,
    (_OURS, "Budget"): _budget,
    (_ENTERPRISE, "EnterpriseAgentgatewayPolicy"): _enterprise_policy,
    (_OURS, "BudgetPolicy"): _budget_policy,
    (_ENTERPRISE, "EnterpriseAgentgatewayParameters"): _parameters,
    (_AGENTGATEWAY, "EnterpriseAgentgatewayParameters"): _parameters,
    (_OURS, "BudgetDimensions"): _dimensions,
    (_CORE, "ConfigMap"): _config_map,
    (_CORE, "Namespace"): _namespace,
    (_OURS, "BudgetNamespaces"): _namespace_labels,
}
# Both budget kinds share budget ids (`namespace/resource/entry`), so they must not share names.
_IDENTITY_KIND = {"EnterpriseAgentgatewayBudget": "Budget"}
_CLUSTER_SCOPED = {"Namespace", "BudgetNamespaces"}


def _document(r: _Reporter, node: _Node, acc: _Collected) -> None:
    if _is_null(node):
        return  # an empty document between `---` markers
    if not isinstance(node, _Map):
        r.add(node.line, "", f"a document must be a mapping with apiVersion and kind, got {_describe(node)}")
        return
    api_version = r.string(r.get(node, "apiVersion", "", required=True), "apiVersion")
    kind = r.string(r.get(node, "kind", "", required=True), "kind")
    if api_version is None or kind is None:
        return
    if (api_version, kind) == (_CORE, "List"):  # what `kubectl get -o yaml` prints
        items = r.sequence(r.get(node, "items", "", required=True), "items")
        for i, item in enumerate(items.items if items else ()):
            _document(r.nested(f"items[{i}]"), item, acc)
        return
    handler = _KINDS.get((api_version, kind))
    if handler is None:
        # Another version of one of our kinds is a mistake; any other kind (Gateway,
        # HTTPRoute, Deployment...) belongs to someone else and is left alone.
        expected = [version for version, known in _KINDS if known == kind]
        if any(api_version.rpartition("/")[0] == version.rpartition("/")[0] for version in expected):
            r.add(
                node.fields["apiVersion"].line,
                "apiVersion",
                f"unsupported for {kind}; expected {' or '.join(expected)}",
            )
        return
    meta = _metadata(r, node)
    if meta is None:
        return
    namespace = "" if kind in _CLUSTER_SCOPED else meta.namespace
    identity = (_IDENTITY_KIND.get(kind, kind), namespace, meta.name)
    if identity in acc.resources:
        shown = f"{namespace}/{meta.name}" if namespace else meta.name
        r.add(
            meta.line,
            "metadata.name",
            f'{kind} "{shown}" is defined twice (first at {acc.resources[identity]})',
        )
        return
    acc.resources[identity] = r.site(meta.line)
    handler(r, node, meta, acc)


def _documents(r: _Reporter, text: str) -> list[_Node]:
    """Every document of a YAML stream; those before a syntax error are still checked."""
    documents: list[_Node] = []
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


def _read(path: Path, r: _Reporter) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as error:
        r.add(0, "(file)", f"cannot read: {error.strerror or error}")
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        r.add(0, "(file)", "cannot read: not UTF-8 text")
        return None


def _config_files(root: Path, problems: list[Problem]) -> Iterator[Path]:
    """A file as given, or a folder's config files, recursively, in name order.

    Names starting with `.` are skipped: editors' swap files, and in a mounted ConfigMap
    the `..data` and `..2024_...` folders that the visible names already link into.
    """
    if not root.is_dir():
        yield root  # a missing file is reported when it is read
        return
    yield from _walk(root, problems, set())


def _walk(folder: Path, problems: list[Problem], visited: set[str]) -> Iterator[Path]:
    real = os.path.realpath(folder)
    if real in visited:  # a symlink loop
        return
    visited.add(real)
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as error:
        problems.append(Problem(str(folder), 0, "(file)", f"cannot list folder: {error.strerror or error}"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = folder / entry.name
        if entry.is_dir():
            yield from _walk(path, problems, visited)
        elif entry.name.lower().endswith(_CONFIG_SUFFIXES):
            yield path


def load_config(paths: Sequence[str | Path], catalog_files: Sequence[str | Path] = ()) -> Config:
    """Reads and validates the configuration in `paths` (files or folders) and the
    `--catalog` files; raises ConfigError listing every problem found."""
    problems: list[Problem] = []
    acc = _Collected()
    attempted: list[str] = []  # the files in the order read, to sort problems by
    sources: list[str] = []
    read: set[str] = set()
    for given in paths:
        for path in _config_files(Path(given), problems):
            real = os.path.realpath(path)
            if real in read:  # named twice, e.g. a file and its folder
                continue
            read.add(real)
            attempted.append(str(path))
            r = _Reporter(str(path), problems)
            text = _read(path, r)
            if text is None:
                continue
            sources.append(str(path))
            for document in _documents(r, text):
                _document(r, document, acc)

    # ConfigMap catalogs first, then --catalog files: the catalog layers later over earlier.
    catalogs = _resolve_catalogs(acc)
    for given in catalog_files:
        attempted.append(str(given))
        r = _Reporter(str(given), problems)
        text = _read(Path(given), r)
        if text is None:
            continue
        sources.append(str(given))
        tree = _catalog_tree(r, text, None)
        document = _catalog(r, tree, str(given)) if tree is not None else None
        if document is not None:
            catalogs.append(document)

    if problems:
        raise ConfigError(_in_file_order(problems, attempted))
    return Config(
        budgets=tuple(acc.budgets),
        policies=tuple(acc.policies),
        dimensions=MappingProxyType(dict(acc.dimensions)),
        catalogs=tuple(catalogs),
        namespace_labels=MappingProxyType(
            {ns: frozen_map(labels) for ns, labels in acc.namespace_labels.items()}
        ),
        sources=tuple(sources),
    )


def _in_file_order(problems: list[Problem], files: list[str]) -> list[Problem]:
    """Files in the order read, each top to bottom, as an operator fixes them; problems
    found only at the end (a Parameters naming a missing ConfigMap) move into place."""
    order: dict[str, int] = {}
    for file in [*files, *(problem.file for problem in problems)]:
        order.setdefault(file, len(order))
    return sorted(problems, key=lambda problem: (order[problem.file], problem.line))
