"""The Kubernetes source: the cluster's budget resources, listed and watched, as one `Config`.

Each object is parsed on its own into a fragment (`extproc.config.kinds`), the same parser
the file source uses. One team's invalid object never blocks the others: it is left out,
or, when an update is what made it invalid, its last accepted version keeps serving; each
such problem is logged once, counted, and (by the status writer) shown on the object.
Objects are assembled oldest first, so in a conflict the older resource wins, as Gateway
API's policy attachment resolves conflicts.

What is watched: our kinds and the field report's kinds (cluster-wide, or in the
namespaces given, for which namespace-scoped RBAC suffices), Namespaces (live labels for
`Selector` discovery; cluster-wide mode only), the ConfigMaps that Parameters name (each
by name, so no other ConfigMap is read), and Gateway API Gateways and HTTPRoutes (to say
`TargetNotFound`; absent CRDs or RBAC only turn that check off).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry, Counter, Gauge

from extproc.background import Background
from extproc.catalog.model import CatalogDocument
from extproc.config.assemble import Assembly, assemble
from extproc.config.documents import from_object
from extproc.config.errors import Problem
from extproc.config.fields import Reporter
from extproc.config.kinds import Fragment, parse_document
from extproc.config.model import Config
from extproc.config.sources.kubernetes.reflector import Collection, Reflector
from extproc.telemetry import log

__all__ = [
    "GATEWAY_API",
    "POLICY_KINDS",
    "WATCHED",
    "KubernetesMetrics",
    "KubernetesSource",
    "ObjectState",
]

BUDGETS_GROUP = "budgets.extproc.dev"
ENTERPRISE_GROUP = "enterpriseagentgateway.solo.io"
AGENTGATEWAY_GROUP = "agentgateway.dev"

# The kinds the sidecar reads, as the API serves them.
WATCHED = (
    Collection(BUDGETS_GROUP, "v1alpha1", "budgets", "Budget"),
    Collection(BUDGETS_GROUP, "v1alpha1", "budgetpolicies", "BudgetPolicy"),
    Collection(BUDGETS_GROUP, "v1alpha1", "budgetdimensions", "BudgetDimensions"),
    Collection(BUDGETS_GROUP, "v1alpha1", "budgetnamespaces", "BudgetNamespaces", namespaced=False),
    Collection(ENTERPRISE_GROUP, "v1alpha1", "enterpriseagentgatewaybudgets", "EnterpriseAgentgatewayBudget"),
    Collection(
        ENTERPRISE_GROUP, "v1alpha1", "enterpriseagentgatewaypolicies", "EnterpriseAgentgatewayPolicy"
    ),
    Collection(
        ENTERPRISE_GROUP, "v1alpha1", "enterpriseagentgatewayparameters", "EnterpriseAgentgatewayParameters"
    ),
    Collection(
        AGENTGATEWAY_GROUP, "v1alpha1", "enterpriseagentgatewayparameters", "EnterpriseAgentgatewayParameters"
    ),
    Collection("", "v1", "namespaces", "Namespace", namespaced=False),
)
# Read only to tell whether a policy's target exists.
GATEWAY_API = (
    Collection("gateway.networking.k8s.io", "v1", "gateways", "Gateway"),
    Collection("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
)
POLICY_KINDS = frozenset({"BudgetPolicy", "EnterpriseAgentgatewayPolicy"})
BUDGET_KINDS = frozenset({"Budget", "EnterpriseAgentgatewayBudget"})


class KubernetesMetrics:
    """What the Kubernetes source exports, on the sidecar's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.objects = Gauge(
            "extproc_kubernetes_objects", "Objects read from the cluster", ["kind"], registry=r
        )
        self.invalid = Gauge(
            "extproc_kubernetes_invalid_objects",
            "Objects whose current version is invalid (skipped, or their last good version serving)",
            ["kind"],
            registry=r,
        )
        self.rejected = Counter(
            "extproc_kubernetes_rejected_versions",
            "Object versions refused for a problem, each counted once",
            ["kind"],
            registry=r,
        )
        self.api_errors = Counter(
            "extproc_kubernetes_api_errors",
            "Failed list/watch requests to the API server, by reason (gone: a 410 relist)",
            ["kind", "reason"],
            registry=r,
        )
        self.synced = Gauge(
            "extproc_kubernetes_synced", "1 once every collection was listed in full", registry=r
        )
        self.updates = Counter(
            "extproc_kubernetes_config_updates", "Configurations applied from the cluster", registry=r
        )


@dataclass(slots=True)
class ObjectState:
    """One object as the source last judged it: what status should say about it."""

    obj: dict[str, Any]
    # The fragment serving (its current version, or its last good one); None: left out.
    serving: Fragment | None
    # The problems of the current version (its own and those found assembling).
    problems: list[Problem] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.obj.get("metadata") or {}

    @property
    def label(self) -> str:
        meta = self.meta
        where = f"{meta.get('namespace')}/" if meta.get("namespace") else ""
        return f"{self.kind} {where}{meta.get('name')}"

    @property
    def stale(self) -> bool:
        """The current version is invalid, but an earlier accepted version serves."""
        return bool(self.problems) and self.serving is not None


def _order(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return (
        str(meta.get("creationTimestamp") or ""),
        str(meta.get("namespace") or ""),
        str(meta.get("name") or ""),
    )


class KubernetesSource:
    """Watches the cluster and hands each new configuration to `on_config`.

    `on_state` (optional) gets every object's `ObjectState` and the collections of Gateway
    API objects after each rebuild: the status writer's input. Changes are batched for
    `debounce` seconds, so a burst of events (a relist, `kubectl apply -f dir/`) costs one
    rebuild; a change reaches requests well within a second.
    """

    def __init__(
        self,
        api: client.ApiClient,
        on_config: Callable[[Config], None],
        metrics: KubernetesMetrics,
        *,
        namespaces: Sequence[str] = (),
        catalogs: Sequence[CatalogDocument] = (),
        on_state: Callable[[list[ObjectState], Config, Mapping[str, Reflector | None]], None] | None = None,
        debounce: float = 0.05,
        watch_seconds: int = 300,
    ) -> None:
        self.api = api
        self.namespaces = tuple(namespaces)
        self.config: Config | None = None
        self.states: list[ObjectState] = []
        self._on_config = on_config
        self._on_state = on_state
        self._metrics = metrics
        self._catalogs = tuple(catalogs)
        self._debounce = debounce
        self._watch_seconds = watch_seconds
        self._reflectors = [self._reflector(c) for c in self._collections(WATCHED)]
        # Gateway API objects, by kind; a cluster without those CRDs answers 404.
        self._targets = {c.kind: self._reflector(c) for c in self._collections(GATEWAY_API)}
        self._config_maps: dict[tuple[str, str], Reflector] = {}
        self._parsed: dict[tuple[str, str], Fragment] = {}  # (uid, resourceVersion) -> fragment
        self._good: dict[str, Fragment] = {}  # uid -> the last valid fragment
        self._reported: set[tuple[str, str]] = set()  # (uid, resourceVersion) already logged
        self._dirty = asyncio.Event()
        self._loop = Background("kubernetes-source", self._run)
        self.ready = asyncio.Event()

    def _collections(self, collections: Iterable[Collection]) -> list[Collection]:
        """Cluster-wide, or one collection per namespace given (cluster-scoped kinds then skipped)."""
        if not self.namespaces:
            return list(collections)
        return [
            Collection(c.group, c.version, c.plural, c.kind, c.namespaced, namespace)
            for c in collections
            if c.namespaced
            for namespace in self.namespaces
        ]

    def _reflector(self, collection: Collection) -> Reflector:
        return Reflector(
            self.api,
            collection,
            self._changed,
            on_error=self._api_error,
            watch_seconds=self._watch_seconds,
        )

    def _api_error(self, collection: Collection, reason: str) -> None:
        self._metrics.api_errors.labels(collection.kind, reason).inc()

    def _changed(self) -> None:
        self._dirty.set()

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        for reflector in [*self._reflectors, *self._targets.values()]:
            reflector.start()
        self._loop.start()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), timeout)
        return self.ready.is_set()

    async def stop(self) -> None:
        await self._loop.stop()
        for reflector in [*self._reflectors, *self._targets.values(), *self._config_maps.values()]:
            await reflector.stop()

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self._debounce)
            self._dirty.clear()
            try:
                self.rebuild()
            except Exception:  # a bug here must not end the watching; the last config serves
                log.exception("configuration from the cluster could not be built")

    # -- building -----------------------------------------------------------------------

    def _synced(self) -> bool:
        watched = [*self._reflectors, *self._config_maps.values()]
        return all(r.synced.is_set() for r in watched)

    def rebuild(self) -> None:
        """One configuration from every object now known; applied once everything was listed."""
        states = [self._judge(obj) for r in self._reflectors for obj in r.objects.values()]
        self._follow_config_maps(s.serving for s in states if s.serving is not None)
        if not self._synced():
            return  # not ready until the first full list: a partial view could under-enforce
        states += [self._judge(obj) for r in self._config_maps.values() for obj in r.objects.values()]
        states.sort(key=lambda state: _order(state.obj))
        serving = [s.serving for s in states if s.serving is not None]
        assembly = assemble(serving, self._catalogs, ("kubernetes",))
        for state in states:
            self._met(state, assembly)
        self._count(states)
        self.states = states
        config = assembly.config
        if config != self.config:
            self.config = config
            self._metrics.updates.inc()
            self._on_config(config)
        if not self.ready.is_set():
            self.ready.set()
            self._metrics.synced.set(1)
        if self._on_state is not None:
            targets: dict[str, Reflector | None] = {
                kind: (r if r.problem is None and r.synced.is_set() else None)
                for kind, r in self._targets.items()
            }
            self._on_state(states, config, targets)

    def _judge(self, obj: dict[str, Any]) -> ObjectState:
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}/{obj.get('kind')}")
        version = (uid, str(meta.get("resourceVersion") or ""))
        fragment = self._parsed.get(version)
        if fragment is None:
            fragment = self._parse(obj)
            self._parsed[version] = fragment
        if fragment.valid:
            self._good[uid] = fragment
            return ObjectState(obj, fragment)
        state = ObjectState(obj, self._good.get(uid), list(fragment.report.problems))
        if version not in self._reported:
            self._reported.add(version)
            self._metrics.rejected.labels(state.kind).inc()
            log.error(
                "kubernetes object rejected",
                object=state.label,
                resource_version=version[1],
                serving="its last accepted version" if state.serving else "nothing (left out)",
                problems=[f"{p.path}: {p.reason}" for p in state.problems],
            )
        return state

    def _parse(self, obj: dict[str, Any]) -> Fragment:
        label = ObjectState(obj, None).label
        r = Reporter(label, [])
        fragments = parse_document(r, from_object(obj, -1))
        if len(fragments) == 1:
            (fragment,) = fragments
            fragment.report.problems[:0] = r.problems
            return fragment
        # Not a kind we read (the API served something unexpected): an invalid fragment.
        fragment = Fragment(str(obj.get("apiVersion")), str(obj.get("kind")), "", "", r.apart(), -1)
        fragment.report.problems.extend(
            r.problems or [Problem(label, -1, "kind", "is not a kind the sidecar reads")]
        )
        return fragment

    def _met(self, state: ObjectState, assembly: Assembly) -> None:
        """Adds what assembling found about the object (a conflict with an older one)."""
        if state.serving is None:
            return
        met = assembly.problems_of(state.serving)[len(state.serving.report.problems) :]
        if met:
            state.problems += met
            version = (str(state.meta.get("uid")), f"met:{state.meta.get('resourceVersion')}")
            if version not in self._reported:
                self._reported.add(version)
                # A conflict with an older object, or a catalog a Parameters names that cannot be read.
                log.error(
                    "kubernetes object not applied in part",
                    object=state.label,
                    problems=[f"{p.path}: {p.reason}" for p in met],
                )

    def _count(self, states: list[ObjectState]) -> None:
        kinds = {c.kind for c in WATCHED} | {"ConfigMap"}
        for kind in kinds:
            of_kind = [s for s in states if s.kind == kind]
            self._metrics.objects.labels(kind).set(len(of_kind))
            self._metrics.invalid.labels(kind).set(sum(1 for s in of_kind if s.problems))
        # Forget parses of versions no longer current, so memory follows the cluster.
        current = {(str(s.meta.get("uid") or ""), str(s.meta.get("resourceVersion") or "")) for s in states}
        live_uids = {uid for uid, _ in current}
        self._parsed = {k: v for k, v in self._parsed.items() if k in current}
        self._good = {uid: f for uid, f in self._good.items() if uid in live_uids}
        self._reported = {k for k in self._reported if k[0] in live_uids}

    def _follow_config_maps(self, serving: Iterable[Fragment]) -> None:
        """Watch exactly the ConfigMaps that Parameters name; stop watching the rest."""
        wanted = {(ref.namespace, ref.name) for fragment in serving for ref in fragment.catalog_refs}
        for key in set(self._config_maps) - wanted:
            reflector = self._config_maps.pop(key)
            asyncio.get_running_loop().create_task(reflector.stop())
        for namespace, name in sorted(wanted - set(self._config_maps)):
            reflector = self._reflector(
                Collection("", "v1", "configmaps", "ConfigMap", True, namespace, name)
            )
            self._config_maps[(namespace, name)] = reflector
            reflector.start()
