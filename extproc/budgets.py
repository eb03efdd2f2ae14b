"""Which budget entries apply to a request: route scoping, discovery and subject matching.

Pure functions over the frozen `Config`; built once per configuration into a
`BudgetIndex`, whose per-route answers are cached (route names are few).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Charge:
    """One entry that applies to one request, with the subject values it is counted under."""

    entry: BudgetEntry
    # The resolved values of the entry's subject keys ("*" replaced by the request's value).
    values: tuple[tuple[str, str], ...]

    @property
    def counter_id(self) -> str:
        """Spend identity: entry, unit and window, and subject values; never the limit.

        Editing a limit keeps the spend counted so far; changing the unit or window
        starts a fresh counter (tokens must never be read as dollars).
        """
        e = self.entry
        subject = ",".join(f"{k}={v}" for k, v in self.values)
        return f"{e.budget_id}:{e.unit.value}:{e.window.value}|{subject}"


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


def match(resources: Iterable[BudgetResource], dims: Mapping[str, str]) -> list[Charge]:
    """The entries that apply to a request whose dimensions resolved to `dims`.

    An entry applies when every subject key is present (non-empty) with the same value,
    `"*"` matching any value. Within one resource, among entries on the same set of
    keys, a more specific entry (exact where the other has `"*"`) overrides the other:
    the report's `everyone-else` watches only the groups with no entry of their own.
    Entries on different keys stack.
    """
    charges: list[Charge] = []
    for resource in resources:
        applicable = [e for e in resource.entries if _applies(e, dims)]
        for entry in applicable:
            if any(_overrides(other, entry) for other in applicable if other is not entry):
                continue
            values = tuple(sorted((k, dims[k]) for k in entry.subject))
            charges.append(Charge(entry=entry, values=values))
    return charges


def _applies(entry: BudgetEntry, dims: Mapping[str, str]) -> bool:
    for key, want in entry.subject.items():
        have = dims.get(key)
        if not have or (want != WILDCARD and want != have):
            return False
    return True


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
