"""Which budget entries apply to a request: route scoping, discovery and subject matching.

Pure functions over the frozen `Config`; built once per configuration into a
`BudgetIndex`, whose per-route answers are cached (route names are few).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from extproc.config.model import (
    WILDCARD,
    BudgetEntry,
    BudgetResource,
    Config,
    DiscoveryMode,
    EnforcementPolicy,
    FailureMode,
    TargetRef,
)
from extproc.dimensions import DimensionValue


@dataclass(frozen=True, slots=True)
class Charge:
    """One entry that applies to one request, with the subject values it is counted under."""

    entry: BudgetEntry
    # The resolved values of the entry's subject keys ("*" replaced by the request's value).
    values: tuple[tuple[str, str], ...]
    # Spend identity: entry, unit and window, and subject values; never the limit. Editing
    # a limit keeps the spend counted so far; changing the unit or window starts a fresh
    # counter (tokens must never be read as dollars). Computed once, used several times.
    counter_id: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        e = self.entry
        subject = ",".join(f"{_escape(k)}={_escape(_bounded(v))}" for k, v in self.values)
        object.__setattr__(self, "counter_id", f"{e.budget_id}:{e.unit.value}:{e.window.value}|{subject}")


# Subject values come from requests: escape what separates them in a counter id, so two
# subjects can never share one counter, and bound their length (a long value is hashed).
_ESCAPES = str.maketrans({"%": "%25", ",": "%2C", "=": "%3D", "|": "%7C"})
MAX_VALUE_CHARS = 128


def _escape(text: str) -> str:
    return text.translate(_ESCAPES)


def _bounded(value: str) -> str:
    if len(value) <= MAX_VALUE_CHARS:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:32]


def parse_subject(counter_id: str) -> tuple[tuple[str, str], ...]:
    """The subject values a counter id was made from (as `counter_id` wrote them)."""
    subject = counter_id.split("|", 1)[1] if "|" in counter_id else ""
    pairs = [p.split("=", 1) for p in subject.split(",") if "=" in p]
    return tuple((unquote(k), unquote(v)) for k, v in pairs)


@dataclass(frozen=True, slots=True)
class RouteBudgets:
    """What an enforced route carries: its entries grouped by resource, and how to fail."""

    resources: tuple[BudgetResource, ...]
    failure_mode: FailureMode
    # From the targeting policies: which API and provider the route speaks, when the path
    # does not say it right, and whether to estimate usage a response does not report.
    api: str | None = None
    provider: str | None = None
    estimate_usage: bool = False


def route_matches(ref: TargetRef, route_name: str) -> bool:
    """A target ref selects a route by `NAME`, `NAMESPACE/NAME` or Envoy Gateway's
    `httproute/NAMESPACE/NAME/rule/...`; a Gateway ref selects every route."""
    if ref.kind == "Gateway":
        return True
    if route_name in (ref.name, f"{ref.namespace}/{ref.name}"):
        return True
    prefix = f"httproute/{ref.namespace}/{ref.name}/"
    return route_name.startswith(prefix) or route_name == prefix[:-1]


def discovered(policy: EnforcementPolicy, config: Config) -> Iterable[BudgetResource]:
    for resource in config.budgets:
        if policy.discovery is DiscoveryMode.ALL:
            yield resource
        elif policy.discovery is DiscoveryMode.SAME:
            if resource.namespace == policy.namespace:
                yield resource
        else:
            labels = config.namespace_labels.get(resource.namespace, {})
            if all(labels.get(k) == v for k, v in policy.selector.items()):
                yield resource


class BudgetIndex:
    """The configuration's answer to "which entries apply here?", computed once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._routes: dict[str, RouteBudgets | None] = {}

    def for_route(self, route_name: str) -> RouteBudgets | None:
        """The budgets of an enforced route, or None when no policy targets it."""
        try:
            return self._routes[route_name]
        except KeyError:
            pass
        policies = [
            p for p in self.config.policies if any(route_matches(r, route_name) for r in p.target_refs)
        ]
        result: RouteBudgets | None = None
        if policies:
            seen: dict[tuple[str, str], BudgetResource] = {}
            for policy in policies:
                for resource in discovered(policy, self.config):
                    # A budget reachable through two policies is charged once.
                    seen.setdefault((resource.namespace, resource.name), resource)
            closed = any(p.failure_mode is FailureMode.CLOSED for p in policies)
            result = RouteBudgets(
                resources=tuple(seen.values()),
                failure_mode=FailureMode.CLOSED if closed else FailureMode.OPEN,
                api=next((p.api for p in policies if p.api), None),
                provider=next((p.provider for p in policies if p.provider), None),
                estimate_usage=any(p.estimate_usage for p in policies),
            )
        if len(self._routes) < 10_000:  # route names come from Envoy's config, but stay bounded
            self._routes[route_name] = result
        return result

    def subject_keys(self, route: RouteBudgets) -> frozenset[str]:
        return frozenset(k for res in route.resources for e in res.entries for k in e.subject)


# A request is charged at most this many value combinations per entry (a user in 200
# groups must not cost 200 counters a request); beyond it, `Matching.capped` says so.
MAX_COMBINATIONS = 64
# Combinations an entry may look at, overridden ones included, before giving up.
_MAX_EXAMINED = 16 * MAX_COMBINATIONS


@dataclass(frozen=True, slots=True)
class Matching:
    """What applies to one request: one charge per (entry, subject values)."""

    charges: tuple[Charge, ...] = ()
    # Budget ids of entries with more value combinations than MAX_COMBINATIONS: they were
    # charged for the first ones in sorted order only. The service logs them.
    capped: tuple[str, ...] = ()


def match(resources: Iterable[BudgetResource], dims: Mapping[str, DimensionValue]) -> list[Charge]:
    """The charges for a request whose dimensions resolved to `dims` (see `match_request`)."""
    return list(match_request(resources, dims).charges)


def match_request(resources: Iterable[BudgetResource], dims: Mapping[str, DimensionValue]) -> Matching:
    """The entries that apply to a request whose dimensions resolved to `dims`.

    An entry applies when every subject key is present (non-empty) with the same value,
    `"*"` matching any value. Within one resource, among entries on the same set of
    keys, a more specific entry (exact where the other has `"*"`) overrides the other:
    the report's `everyone-else` watches only the groups with no entry of their own.
    Entries on different keys stack.

    A list-valued dimension (`groups: [eng, ml]`) holds each of its values: an exact
    entry applies when its value is among them, and a `"*"` entry is charged once per
    value, to that value's own allowance. A user in two groups spends against both
    groups' allowances: a list never lets a request count less than it would under any
    one of its values. The override applies value by value: with entries for
    `engineering` and for `"*"`, `[engineering, design]` charges `engineering` to its
    own entry and `design` to the `"*"` one. Over several list-valued keys an entry is
    charged once per combination (the cartesian product), at most MAX_COMBINATIONS of
    them, and never twice for the same values.
    """
    values = _value_sets(dims)
    charges: list[Charge] = []
    capped: list[str] = []
    seen: set[str] = set()
    for resource in resources:
        applicable = [e for e in resource.entries if _applies(e, values)]
        for entry in applicable:
            rivals = [other for other in applicable if other is not entry and _overrides(other, entry)]
            kept = 0
            for examined, combination in enumerate(_combinations(entry, values)):
                if examined == _MAX_EXAMINED:
                    capped.append(entry.budget_id)
                    break
                if any(_covers(rival, combination) for rival in rivals):
                    continue  # this value has an entry of its own
                if kept == MAX_COMBINATIONS:
                    capped.append(entry.budget_id)
                    break
                charge = Charge(entry=entry, values=combination)
                if charge.counter_id in seen:
                    continue
                seen.add(charge.counter_id)
                charges.append(charge)
                kept += 1
    return Matching(tuple(charges), tuple(capped))


def _value_sets(dims: Mapping[str, DimensionValue]) -> dict[str, tuple[str, ...]]:
    """Each present dimension's distinct non-empty values, sorted: one or several alike."""
    out: dict[str, tuple[str, ...]] = {}
    for key, value in dims.items():
        distinct = sorted({value} if isinstance(value, str) else set(value))
        present = tuple(v for v in distinct if v)
        if present:
            out[key] = present
    return out


def _applies(entry: BudgetEntry, values: Mapping[str, tuple[str, ...]]) -> bool:
    for key, want in entry.subject.items():
        have = values.get(key)
        if not have or (want != WILDCARD and want not in have):
            return False
    return True


def _combinations(
    entry: BudgetEntry, values: Mapping[str, tuple[str, ...]]
) -> Iterator[tuple[tuple[str, str], ...]]:
    """The entry's subject values for this request, one tuple of (key, value) pairs per
    combination, keys sorted, in sorted order; a `"*"` key ranges over all its values."""
    keys = sorted(entry.subject)
    choices = [values[k] if entry.subject[k] == WILDCARD else (entry.subject[k],) for k in keys]
    for combination in itertools.product(*choices):
        yield tuple(zip(keys, combination, strict=True))


def _covers(entry: BudgetEntry, combination: tuple[tuple[str, str], ...]) -> bool:
    """True when `entry` would be charged under exactly these subject values."""
    return all(entry.subject[k] in (WILDCARD, v) for k, v in combination)


def _overrides(specific: BudgetEntry, general: BudgetEntry) -> bool:
    """True when `specific` names exactly at least one key that `general` wildcards,
    and is nowhere less specific, over the same keys."""
    if specific.subject.keys() != general.subject.keys():
        return False
    stricter = False
    for key, g in general.subject.items():
        s = specific.subject[key]
        if s == WILDCARD and g != WILDCARD:
            return False
        if s != WILDCARD and g == WILDCARD:
            stricter = True
    return stricter
