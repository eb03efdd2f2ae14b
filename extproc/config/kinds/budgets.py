"""Budget and EnterpriseAgentgatewayBudget: entries of a limit over a window for a subject."""

from __future__ import annotations

import re
from decimal import Decimal

from extproc.config.documents import Map, Node, Scalar, join
from extproc.config.fields import Reporter
from extproc.config.kinds.base import Fragment, Meta
from extproc.config.model import NANOS_PER_USD, Action, BudgetEntry, BudgetResource, Unit, Window, frozen_map

__all__ = ["MAX_TOKENS", "parse_budget", "subject_text_problem"]

_ENTRY_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The upstream CRD forbids these in subject keys and values; keeping them out leaves
# them free to delimit a subject inside a spend-store key.
_FORBIDDEN_CHARS = ("|", "^", "`")
_MAX_SUBJECT_KEYS = 16
MAX_TOKENS = 2**32 - 1
# USD limits are compared in nano-dollars against Redis integers, which are signed 64-bit.
_MAX_USD = Decimal(2**63 - 1).scaleb(-9)
_NANO_DIGITS = len(str(NANOS_PER_USD)) - 1
_MAX_NOTIFY_AT = 10
_ENTRY_FIELDS = ("name", "subject", "limit", "window", "onBudgetExceeded", "notifyAt")


def parse_budget(r: Reporter, doc: Map, meta: Meta, out: Fragment) -> None:
    """A Budget or EnterpriseAgentgatewayBudget: a namespaced list of entries."""
    spec = r.mapping(r.get(doc, "spec", "", required=True), "spec")
    budgets = r.sequence(r.get(spec, "budgets", "spec", required=True), "spec.budgets")
    if budgets is None:
        return
    entries: list[BudgetEntry] = []
    first_lines: dict[str, int] = {}
    for i, item in enumerate(budgets.items):
        path = f"spec.budgets[{i}]"
        entry = _budget_entry(r, item, path, meta)
        name_node = item.fields.get("name") if isinstance(item, Map) else None
        name = name_node.value if isinstance(name_node, Scalar) else None
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
    out.budget = BudgetResource(meta.namespace, meta.name, tuple(entries), frozen_map(meta.labels))


def _budget_entry(r: Reporter, node: Node, path: str, meta: Meta) -> BudgetEntry | None:
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
    notify_at = _notify_at(r, r.get(entry, "notifyAt", path), f"{path}.notifyAt")
    if name is None or subject is None or limit is None or window is None or action is None:
        return None
    unit, amount = limit
    return BudgetEntry(
        meta.namespace, meta.name, name, unit, amount, window, action, frozen_map(subject), notify_at
    )


def _notify_at(r: Reporter, node: Node | None, path: str) -> tuple[int, ...]:
    """`notifyAt: [50, 80, 100]`: percentages of the limit, each 1 to 1000, at most 10."""
    if node is None:
        return ()
    items = r.sequence(node, path)
    if items is None:
        return ()
    if len(items.items) > _MAX_NOTIFY_AT:
        r.add(items.line, path, f"at most {_MAX_NOTIFY_AT} thresholds, got {len(items.items)}")
        return ()
    values: list[int] = []
    for i, item in enumerate(items.items):
        value = item.value if isinstance(item, Scalar) else None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 1000:
            r.add(item.line, f"{path}[{i}]", f"a percentage of the limit, 1 to 1000, not {value!r}")
            continue
        values.append(value)
    return tuple(sorted(set(values)))


def _entry_name(r: Reporter, node: Node | None, path: str) -> str | None:
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


def _subject(r: Reporter, node: Node | None, path: str) -> dict[str, str] | None:
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
        key_path = join(path, key)
        key_problem = subject_text_problem(key, "a subject key")
        if key_problem:
            r.add(subject.key_lines[key], key_path, key_problem)
            valid = False
        value = r.text(value_node, key_path)
        if value is None:
            valid = False
            continue
        value_problem = subject_text_problem(value, "a subject value")
        if value_problem:
            r.add(value_node.line, key_path, value_problem)
            valid = False
        result[key] = value
    return result if valid else None


def subject_text_problem(text: str, what: str) -> str | None:
    if not text:
        return f"{what} must not be empty"
    found = [char for char in _FORBIDDEN_CHARS if char in text]
    if found:
        return f'{what} must not contain {", ".join(found)} (got "{text}")'
    return None


def _limit(r: Reporter, node: Node | None, path: str) -> tuple[Unit, Decimal] | None:
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
        elif amount > MAX_TOKENS:
            r.add(line, amount_path, f"a token limit is at most {MAX_TOKENS} (2^32-1), got {amount:f}")
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
