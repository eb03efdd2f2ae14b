"""EnterpriseAgentgatewayPolicy (`traffic.entBudgetEnforcement`) and BudgetPolicy.

Both say which routes are enforced (targetRefs, local to the policy's namespace as in
Gateway API policy attachment), which namespaces' budgets apply (discovery) and what to
do when the spend store is unreachable (failureMode).
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.config.documents import Map, Node, is_null, join
from extproc.config.fields import Reporter
from extproc.config.kinds.base import Fragment, Meta
from extproc.config.kinds.budgets import subject_text_problem
from extproc.config.model import (
    DiscoveryMode,
    EnforcementPolicy,
    FailureMode,
    TargetRef,
    frozen_map,
)
from extproc.usage.apis import API_NAMES

__all__ = ["parse_budget_policy", "parse_enterprise_policy"]

_GATEWAY_API_GROUP = "gateway.networking.k8s.io"
# What a policy may say about how its routes' calls are read and priced.
_ROUTE_FIELDS = ("provider", "api", "estimateUsage", "rateLimitHeaders")
_ENTERPRISE_FIELDS = ("discovery", "failureMode", *_ROUTE_FIELDS)
_POLICY_FIELDS = ("targetRefs", "discovery", "failureMode", *_ROUTE_FIELDS)


def _target_refs(r: Reporter, parent: Map | None, path: str, namespace: str) -> tuple[TargetRef, ...]:
    refs = r.sequence(r.get(parent, "targetRefs", path, required=True), join(path, "targetRefs"))
    if refs is None:
        return ()
    path = join(path, "targetRefs")
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
        if ns_node is not None and ref_namespace is not None and ref_namespace != namespace:
            # Policy attachment (GEP-713): a policy reaches only its own namespace's objects,
            # so one team cannot cap another's routes.
            r.add(
                ns_node.line,
                f"{item_path}.namespace",
                f'targetRefs are local to the policy\'s namespace "{namespace}", got "{ref_namespace}"; '
                "create the policy in the target's namespace",
            )
        if kind and name and ref_namespace and r.count() == before:
            result.append(TargetRef(kind, name, ref_namespace))
    return tuple(result)


def _discovery(r: Reporter, node: Node | None, path: str) -> tuple[DiscoveryMode, dict[str, str]]:
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
        if mode is DiscoveryMode.SELECTOR and labels == {}:
            # An empty selector selects every namespace: say All if that is what is meant.
            r.add(
                selector.line,
                f"{path}.selector.matchLabels",
                "must name at least one label (for every namespace, use from: All)",
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


def _policy_discovery(r: Reporter, node: Node | None, path: str) -> tuple[DiscoveryMode, dict[str, str]]:
    """BudgetPolicy's discovery: `{from, selector}`, or the field report's `{namespaces: {from, selector}}`,
    so that a policy converted from the report's kind keeps its shape."""
    discovery = r.mapping(node, path)
    if discovery is None or "namespaces" not in discovery.fields:
        return _discovery(r, discovery, path)
    others = [key for key in discovery.fields if key != "namespaces"]
    for key in others:
        r.add(
            discovery.key_lines[key],
            join(path, key),
            "set either namespaces (the field report's shape) or from/selector, not both",
        )
    return _discovery(r, r.get(discovery, "namespaces", path), f"{path}.namespaces")


def parse_enterprise_policy(r: Reporter, doc: Map, meta: Meta, out: Fragment) -> None:
    """An EnterpriseAgentgatewayPolicy: only its `traffic.entBudgetEnforcement` is ours."""
    # The same kind carries many unrelated policies: only budget enforcement is ours.
    spec = doc.fields.get("spec")
    traffic = spec.fields.get("traffic") if isinstance(spec, Map) else None
    enforcement = traffic.fields.get("entBudgetEnforcement") if isinstance(traffic, Map) else None
    if enforcement is None or is_null(enforcement) or not isinstance(spec, Map):
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
    out.policy = _policy(meta, targets, mode, selector, failure, route)


def parse_budget_policy(r: Reporter, doc: Map, meta: Meta, out: Fragment) -> None:
    """A BudgetPolicy: targets, discovery, failure mode and how its routes are read."""
    spec = r.mapping(r.get(doc, "spec", "", required=True), "spec")
    if spec is None:
        return
    r.only(spec, "spec", _POLICY_FIELDS)
    targets = _target_refs(r, spec, "spec", meta.namespace)
    mode, selector = _policy_discovery(r, r.get(spec, "discovery", "spec"), "spec.discovery")
    failure = r.choice(r.get(spec, "failureMode", "spec"), "spec.failureMode", FailureMode, "failure mode")
    route = _route_settings(r, spec, "spec")
    out.policy = _policy(meta, targets, mode, selector, failure, route)


def _policy(
    meta: Meta,
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
        route.rate_limit_headers,
    )


@dataclass(frozen=True, slots=True)
class _RouteSettings:
    provider: str | None = None
    api: str | None = None
    estimate_usage: bool = False
    rate_limit_headers: bool = True


def _route_settings(r: Reporter, parent: Map | None, path: str) -> _RouteSettings:
    """`provider`, `api` and `estimateUsage`: how the targeted routes' calls are read and
    priced; `rateLimitHeaders`: whether their admitted responses get the RateLimit fields."""
    provider = _provider(r, r.get(parent, "provider", path), join(path, "provider"))
    api = r.one_of(r.get(parent, "api", path), join(path, "api"), API_NAMES, "api")
    estimate = r.boolean(r.get(parent, "estimateUsage", path), join(path, "estimateUsage"))
    headers = r.boolean(r.get(parent, "rateLimitHeaders", path), join(path, "rateLimitHeaders"))
    return _RouteSettings(provider, api, bool(estimate), headers is not False)


def _provider(r: Reporter, node: Node | None, path: str) -> str | None:
    text = r.string(node, path)
    if text is None or node is None:
        return None
    # Lower-cased like the names path detection gives: it is also the value that budget
    # subjects on the built-in `provider` dimension are matched against.
    provider = text.strip().lower()
    problem = subject_text_problem(provider, "a provider")
    if problem:
        r.add(node.line, path, problem)
        return None
    return provider
