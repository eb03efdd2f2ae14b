"""Which budget entries apply to a request: route scoping, discovery and subject matching.

Pure functions over the frozen `Config`; built once per configuration into a
`BudgetIndex`, whose answers per (gateway, route) are cached (route names are few).
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

    @property
    def subject_text(self) -> str:
        """The subject as operators read it: `team=ml,user=ann`, or `-` for everyone."""
        return ",".join(f"{k}={v}" for k, v in self.values) or "-"

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
    # Admitted responses carry the RateLimit fields of their tightest entry; any targeting
    # policy can turn that off.
    rate_limit_headers: bool = True
    # The dimension keys any entry's subject names: only they decide what matches.
    subject_keys: tuple[str, ...] = field(init=False, compare=False, repr=False)
    # Matches by those keys' values, computed once per subject (a request's values come
    # from clients: bounded, cleared when full). One per route and configuration.
    _matches: dict[tuple[object, ...], Matching] = field(
        init=False, compare=False, repr=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        keys = {k for r in self.resources for e in r.entries for k in e.subject}
        object.__setattr__(self, "subject_keys", tuple(sorted(keys)))

    def match(self, dims: Mapping[str, DimensionValue]) -> Matching:
        """`match_request` over this route's resources, remembered per subject values."""
        key = tuple(_hashable(dims.get(k)) for k in self.subject_keys)
        found = self._matches.get(key)
        if found is None:
            if len(self._matches) >= MATCH_CACHE_SIZE:
                self._matches.clear()
            found = self._matches[key] = match_request(self.resources, dims)
        return found


MATCH_CACHE_SIZE = 4096


def _hashable(value: DimensionValue | None) -> object:
    return value if value is None or isinstance(value, str) else tuple(value)


def route_identities(route_name: str) -> tuple[tuple[str | None, str], ...]:
    """The HTTPRoutes (namespace, name) an Envoy route name can stand for; namespace None
    when the name does not carry one.

    Split from each gateway's own structure, never by a naive `split`: names of routes may
    hold dots and hyphens, namespaces never hold a dot or a slash (DNS labels).
    - Envoy Gateway: `httproute/NAMESPACE/NAME/rule/I/match/J/HOST` (J is -1 for a rule
      without matches; HOST has its dots as underscores, `*` for any host).
    - Istio, a Gateway API rule without a name: `NAMESPACE.NAME.I` (I the rule's index).
    - Plain Envoy: `NAMESPACE/NAME`, or `NAME` alone (also how Istio names a named rule and
      a VirtualService's `http[].name`): the name only, in no particular namespace.
    """
    found: list[tuple[str | None, str]] = [(None, route_name)]
    parts = route_name.split("/")
    if parts[0] == "httproute":
        if _envoy_gateway_tail(parts):
            found.append((parts[1], parts[2]))
    elif len(parts) == 2:
        if _is_label(parts[0]) and parts[1]:
            found.append((parts[0], parts[1]))
    elif len(parts) == 1:
        namespace, _, rest = route_name.partition(".")
        name, _, index = rest.rpartition(".")
        if _is_label(namespace) and name and index.isascii() and index.isdigit():
            found.append((namespace, name))
    return tuple(found)


def _envoy_gateway_tail(parts: list[str]) -> bool:
    """`httproute`, NAMESPACE, NAME, then `rule/I/match/J` and the host (older releases
    left the host out)."""
    if len(parts) not in (7, 8) or not _is_label(parts[1]) or not parts[2]:
        return False
    if parts[3] != "rule" or parts[5] != "match" or not _is_index(parts[4]):
        return False
    return _is_index(parts[6]) or parts[6] == "-1"


def _is_index(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _is_label(text: str) -> bool:
    """A Kubernetes namespace name can be: a DNS label, so never a dot or a slash."""
    return bool(text) and len(text) <= 63 and "." not in text and "/" not in text


def route_matches(ref: TargetRef, route_name: str, gateway: str = "") -> bool:
    """Whether a policy's target ref selects a route, as Gateway API scopes it.

    An HTTPRoute ref selects routes named after that HTTPRoute (`route_identities`), in
    the ref's namespace (the policy's own: targetRefs are local) when the name carries a
    namespace. A Gateway ref selects the routes served by that gateway: `gateway` is the
    request's gateway identity, `NAMESPACE/NAME`, and a request without one is selected by
    no Gateway ref, so another team's gateway is never capped by accident.
    """
    if ref.kind == "Gateway":
        return bool(gateway) and gateway == f"{ref.namespace}/{ref.name}"
    return any(
        name == ref.name and namespace in (None, ref.namespace)
        for namespace, name in route_identities(route_name)
    )


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


@dataclass(frozen=True, slots=True)
class Reach:
    """What discovery leaves out: each a mistake more often than an intent, so warned of."""

    # Budgets no policy's discovery reaches: never enforced.
    undiscovered: tuple[BudgetResource, ...] = ()
    # Policies whose discovery reaches no budget: their routes are enforced with nothing.
    idle: tuple[EnforcementPolicy, ...] = ()

    def warnings(self) -> list[str]:
        return [
            *(
                f'budget {b.namespace}/{b.name}: no policy\'s discovery reaches namespace "{b.namespace}"; '
                "it is not enforced"
                for b in self.undiscovered
            ),
            *(
                f"policy {p.namespace}/{p.name}: its discovery ({p.discovery.value}) reaches no budget"
                for p in self.idle
            ),
        ]


def reach(config: Config) -> Reach:
    reached: set[int] = set()
    idle: list[EnforcementPolicy] = []
    for policy in config.policies:
        found = {id(resource) for resource in discovered(policy, config)}
        if not found:
            idle.append(policy)
        reached |= found
    undiscovered = tuple(b for b in config.budgets if id(b) not in reached)
    return Reach(undiscovered, tuple(idle))


class BudgetIndex:
    """The configuration's answer to "which entries apply here?", computed once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._routes: dict[tuple[str, str], RouteBudgets | None] = {}
        # Without a Gateway ref the gateway changes no answer: one cache entry per route.
        self._by_gateway = any(r.kind == "Gateway" for p in config.policies for r in p.target_refs)

    def for_route(self, route_name: str, gateway: str = "") -> RouteBudgets | None:
        """The budgets of an enforced route on a gateway (`NAMESPACE/NAME`, or "" when the
        request carries no gateway identity), or None when no policy targets it."""
        key = (gateway if self._by_gateway else "", route_name)
        try:
            return self._routes[key]
        except KeyError:
            pass
        policies = [
            p
            for p in self.config.policies
            if any(route_matches(r, route_name, key[0]) for r in p.target_refs)
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
                rate_limit_headers=all(p.rate_limit_headers for p in policies),
            )
        if len(self._routes) < 10_000:  # route names come from Envoy's config, but stay bounded
            self._routes[key] = result
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
