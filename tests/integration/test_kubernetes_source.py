"""The Kubernetes source through kubernetes_asyncio against a server that speaks the API's
wire protocol (tests/support/kube_api.py: JSON lists with resourceVersion, chunked watch
events, bookmarks, 410 Gone, merge-patch on status, Leases). No kube-apiserver installs
here; the README says so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from extproc.config.model import Config
from extproc.config.sources.kubernetes.cluster import Cluster, ClusterOptions, api_client
from extproc.config.sources.kubernetes.lease import LeaderElector
from extproc.config.sources.kubernetes.status import CONTROLLER_NAME
from tests.support.kube_api import KubeApiServer

pytestmark = pytest.mark.integration

OURS = "budgets.extproc.dev/v1alpha1"


def budget(namespace: str, name: str, amount: object = 100, unit: str = "Tokens", **extra: Any) -> dict:
    entry = {"name": "daily", "limit": {"unit": unit, "amount": amount}, "window": {"unit": "Day"}}
    entry["onBudgetExceeded"] = "Block"
    return {
        "apiVersion": OURS,
        "kind": "Budget",
        "metadata": {"name": name, "namespace": namespace, **extra},
        "spec": {"budgets": [entry]},
    }


def policy(namespace: str, name: str = "enforce", route: str = "chat", discovery: dict | None = None) -> dict:
    spec: dict[str, Any] = {
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route}]
    }
    if discovery is not None:
        spec["discovery"] = discovery
    return {
        "apiVersion": OURS,
        "kind": "BudgetPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def namespace(name: str, labels: dict[str, str] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}


def route(namespace: str, name: str) -> dict:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {},
    }


def limits(config: Config | None) -> dict[str, int]:
    if config is None:
        return {}
    return {e.budget_id: int(e.amount) for b in config.budgets for e in b.entries}


class Harness:
    def __init__(self, kube: KubeApiServer, cluster: Cluster, registry: CollectorRegistry) -> None:
        self.kube = kube
        self.cluster = cluster
        self.registry = registry
        self.configs: list[Config] = []

    @property
    def config(self) -> Config | None:
        return self.cluster.source.config

    async def until(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s; config: {limits(self.config)}")
            await asyncio.sleep(0.02)

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def kube() -> Any:
    with KubeApiServer(bookmark_interval=0.2) as server:
        for ns in ("team-a", "team-b", "gw"):
            server.apply(namespace(ns))
        yield server


async def start(kube: KubeApiServer, tmp_path: Path, **options: Any) -> Harness:
    kubeconfig = kube.write_kubeconfig(tmp_path / f"kubeconfig-{len(list(tmp_path.iterdir()))}")
    registry = CollectorRegistry()
    opts = ClusterOptions(
        kubeconfig=str(kubeconfig),
        lease_namespace="gw",
        watch_seconds=options.pop("watch_seconds", 30),
        lease_seconds=3,
        renew_seconds=0.3,
        **options,
    )
    harness: Harness | None = None

    def applied(config: Config) -> None:
        assert harness is not None
        harness.configs.append(config)

    cluster = Cluster(await api_client(str(kubeconfig)), opts, applied, registry)
    if cluster.writer is not None:
        cluster.writer._resync = 0.2
    harness = Harness(kube, cluster, registry)
    await cluster.start()
    return harness


@pytest.fixture
async def harness(kube: KubeApiServer, tmp_path: Path) -> AsyncIterator[Harness]:
    h = await start(kube, tmp_path)
    try:
        yield h
    finally:
        try:
            await asyncio.wait_for(h.cluster.stop(), 10)
        except TimeoutError:
            for t in asyncio.all_tasks():
                t.print_stack()
            raise


async def test_budgets_of_every_team_are_listed_and_a_change_reaches_the_config(harness: Harness) -> None:
    kube = harness.kube
    kube.apply(budget("team-a", "a"))
    kube.apply(budget("team-b", "b"))
    kube.apply(policy("team-a"))
    assert await harness.cluster.source.wait_ready(5)
    await harness.until(lambda: limits(harness.config) == {"team-a/a/daily": 100, "team-b/b/daily": 100})
    (only,) = harness.config.policies
    assert (only.namespace, only.target_refs[0].namespace) == ("team-a", "team-a")

    edited_at = time.monotonic()
    kube.apply(budget("team-a", "a", amount=250))
    await harness.until(lambda: limits(harness.config).get("team-a/a/daily") == 250, timeout=2)
    assert time.monotonic() - edited_at < 2  # the bound: a change reaches requests within 2 s

    kube.delete(OURS, "Budget", "a", "team-a")
    await harness.until(lambda: "team-a/a/daily" not in limits(harness.config), timeout=2)


async def test_one_team_s_invalid_object_never_blocks_the_others(harness: Harness) -> None:
    kube = harness.kube
    kube.apply(budget("team-a", "good"))
    kube.apply(budget("team-b", "bad", amount=-5))
    await harness.until(lambda: limits(harness.config) == {"team-a/good/daily": 100})
    assert harness.metric("extproc_kubernetes_invalid_objects", kind="Budget") == 1
    assert harness.metric("extproc_kubernetes_rejected_versions_total", kind="Budget") == 1
    (bad,) = [s for s in harness.cluster.source.states if s.meta.get("name") == "bad"]
    assert bad.serving is None
    assert [f"{p.path}: {p.reason}" for p in bad.problems] == [
        "spec.budgets[0].limit.amount: must be positive, got -5"
    ]
    assert str(bad.problems[0]).startswith("Budget team-b/bad: spec.budgets[0]")


async def test_an_invalid_update_keeps_the_last_good_version(harness: Harness) -> None:
    kube = harness.kube
    kube.apply(budget("team-a", "a", amount=300))
    await harness.until(lambda: limits(harness.config) == {"team-a/a/daily": 300})
    kube.apply(budget("team-a", "a", amount="lots"))
    await harness.until(lambda: harness.metric("extproc_kubernetes_invalid_objects", kind="Budget") == 1)
    assert limits(harness.config) == {"team-a/a/daily": 300}
    (state,) = [s for s in harness.cluster.source.states if s.kind == "Budget"]
    assert state.stale
    kube.apply(budget("team-a", "a", amount=400))  # fixed: the new version serves
    await harness.until(lambda: limits(harness.config) == {"team-a/a/daily": 400})
    assert harness.metric("extproc_kubernetes_invalid_objects", kind="Budget") == 0


async def test_a_watch_cut_mid_event_resumes_without_losing_the_event(harness: Harness) -> None:
    kube = harness.kube
    kube.apply(budget("team-a", "a"))
    await harness.until(lambda: limits(harness.config) == {"team-a/a/daily": 100})
    await harness.until(lambda: kube.open_watches >= 9)
    kube.cut_watches(mid_event=True)
    kube.apply(budget("team-a", "a", amount=120))
    await harness.until(lambda: limits(harness.config) == {"team-a/a/daily": 120})
    assert harness.metric("extproc_kubernetes_api_errors_total", kind="Budget", reason="cut") >= 1


async def test_a_compacted_version_relists_and_sees_deletions_missed_meanwhile(harness: Harness) -> None:
    kube = harness.kube
    kube.apply(budget("team-a", "a"))
    kube.apply(budget("team-a", "b"))
    await harness.until(lambda: len(limits(harness.config)) == 2)
    # While the sidecar cannot reach the API server, one budget goes and history is compacted.
    kube.stop(graceful=False)
    kube.delete(OURS, "Budget", "b", "team-a")
    kube.compact()
    await harness.until(
        lambda: harness.metric("extproc_kubernetes_api_errors_total", kind="Budget", reason="unreachable")
    )
    assert len(limits(harness.config)) == 2  # the last good configuration keeps serving
    kube.start()
    await harness.until(lambda: limits(harness.config) == {"team-a/a/daily": 100}, timeout=15)
    assert harness.metric("extproc_kubernetes_api_errors_total", kind="Budget", reason="gone") >= 1
    assert harness.metric("extproc_kubernetes_api_errors_total", kind="Budget", reason="unreachable") >= 1


async def test_selector_discovery_follows_live_namespace_labels(harness: Harness) -> None:
    kube = harness.kube
    kube.apply(budget("team-a", "a"))
    kube.apply(
        policy(
            "gw", discovery={"namespaces": {"from": "Selector", "selector": {"matchLabels": {"llm": "on"}}}}
        )
    )
    await harness.until(lambda: harness.config is not None and len(harness.config.policies) == 1)
    assert harness.config.namespace_labels["team-a"].get("llm") is None
    kube.apply(namespace("team-a", {"llm": "on"}))
    await harness.until(lambda: harness.config.namespace_labels["team-a"].get("llm") == "on", timeout=2)


async def test_namespace_scoped_watching_survives_a_forbidden_namespace(
    kube: KubeApiServer, tmp_path: Path
) -> None:
    kube.forbid("budgets", "team-b")
    kube.apply(budget("team-a", "a"))
    kube.apply(budget("team-b", "b"))
    h = await start(kube, tmp_path, namespaces=("team-a", "team-b"), write_status=False)
    try:
        assert await h.cluster.source.wait_ready(5)
        await h.until(lambda: limits(h.config) == {"team-a/a/daily": 100})
        assert h.metric("extproc_kubernetes_api_errors_total", kind="Budget", reason="forbidden") >= 1
        # Namespaces are not read in that mode: no cluster-wide request was made.
        assert not [r for r in kube.requests if r.path == "/api/v1/namespaces"]
    finally:
        await h.cluster.stop()


async def test_not_ready_until_the_first_full_list(kube: KubeApiServer, tmp_path: Path) -> None:
    kube.stop()
    h = await start(kube, tmp_path, write_status=False)
    try:
        assert not await h.cluster.source.wait_ready(0.5)
        assert h.config is None
        kube.start()
        ready = await h.cluster.source.wait_ready(15)
        assert ready, "\n".join(
            f"{r.collection} {r.synced.is_set()} {r.problem}" for r in h.cluster.source._reflectors
        )
    finally:
        await h.cluster.stop()


async def test_status_reports_acceptance_enforcement_and_missing_targets(harness: Harness) -> None:
    kube = harness.kube
    kube.apply(route("team-a", "chat"))
    kube.apply(budget("team-a", "a"))
    kube.apply(budget("team-b", "lonely"))
    kube.apply(budget("team-b", "broken", amount=0))
    kube.apply(policy("team-a"))
    kube.apply(policy("team-a", name="nowhere", route="missing"))

    def conditions(name: str, ns: str) -> dict[str, tuple[str, str]]:
        obj = kube.get(OURS, "Budget", name, ns) or {}
        return {
            c["type"]: (c["status"], c["reason"]) for c in (obj.get("status") or {}).get("conditions", [])
        }

    await harness.until(
        lambda: (
            conditions("a", "team-a") == {"Accepted": ("True", "Accepted"), "Enforced": ("True", "Enforced")}
        )
    )
    await harness.until(
        lambda: (
            conditions("lonely", "team-b")
            == {"Accepted": ("True", "Accepted"), "Enforced": ("False", "NotDiscovered")}
        )
    )
    await harness.until(lambda: conditions("broken", "team-b").get("Accepted") == ("False", "Invalid"))
    broken = kube.get(OURS, "Budget", "broken", "team-b")
    accepted = next(c for c in broken["status"]["conditions"] if c["type"] == "Accepted")
    assert "spec.budgets[0].limit.amount: must be positive, got 0" in accepted["message"]

    def ancestors(name: str) -> list[tuple[str, str, str]]:
        obj = kube.get(OURS, "BudgetPolicy", name, "team-a") or {}
        return [
            (a["ancestorRef"]["name"], c["type"], c["reason"])
            for a in (obj.get("status") or {}).get("ancestors", [])
            if a["controllerName"] == CONTROLLER_NAME
            for c in a["conditions"]
        ]

    await harness.until(
        lambda: ancestors("enforce") == [("chat", "Accepted", "Accepted"), ("chat", "Attached", "Attached")]
    )
    await harness.until(
        lambda: (
            ancestors("nowhere")
            == [("missing", "Accepted", "TargetNotFound"), ("missing", "Attached", "TargetNotFound")]
        )
    )
    # Status is patched as a JSON merge patch on the status subresource, never as JSON Patch.
    patches = [r for r in kube.requests if r.method == "PATCH"]
    assert patches and all(
        r.path.endswith("/status") and r.content_type == "application/merge-patch+json" for r in patches
    )
    # Nothing changed: nothing more is written.
    written = len(patches)
    await asyncio.sleep(0.6)
    assert len([r for r in kube.requests if r.method == "PATCH"]) == written


async def test_one_replica_writes_status_and_another_takes_over_when_it_stops(
    kube: KubeApiServer, tmp_path: Path
) -> None:
    api_a = await api_client(str(kube.write_kubeconfig(tmp_path / "a")))
    api_b = await api_client(str(kube.write_kubeconfig(tmp_path / "b")))
    a = LeaderElector(api_a, "gw", "lease", "a", lease_seconds=2, renew_seconds=0.2)
    b = LeaderElector(api_b, "gw", "lease", "b", lease_seconds=2, renew_seconds=0.2)
    try:
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()  # a renewed recently, by b's own clock
        a.start()
        b.start()
        await asyncio.sleep(1.0)
        assert a.is_leader and not b.is_leader
        await a.stop()  # a clean stop hands the lease over at once
        deadline = time.monotonic() + 3
        while not b.is_leader and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert b.is_leader
        lease = kube.get("coordination.k8s.io/v1", "Lease", "lease", "gw")
        assert lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] >= 1
    finally:
        await a.stop()
        await b.stop()
        await api_a.close()
        await api_b.close()


async def test_a_leader_that_stops_renewing_is_replaced_after_the_lease(
    kube: KubeApiServer, tmp_path: Path
) -> None:
    api = await api_client(str(kube.write_kubeconfig(tmp_path / "c")))
    crashed = LeaderElector(api, "gw", "lease2", "crashed", lease_seconds=1, renew_seconds=0.1)
    other = LeaderElector(api, "gw", "lease2", "other", lease_seconds=1, renew_seconds=0.1)
    try:
        assert await crashed.try_acquire_or_renew()  # then never renews: a killed pod
        assert not await other.try_acquire_or_renew()
        await asyncio.sleep(1.2)
        assert await other.try_acquire_or_renew()
    finally:
        await api.close()


async def test_the_catalog_comes_from_exactly_the_config_map_a_parameters_names(harness: Harness) -> None:
    kube = harness.kube
    catalog = "providers:\n  openai:\n    models:\n      gpt-4o: {rates: {input: '2.50', output: '10'}}\n"
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "prices", "namespace": "gw"},
            "data": {"c.yaml": catalog},
        }
    )
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "other", "namespace": "gw"},
            "data": {},
        }
    )
    kube.apply(
        {
            "apiVersion": "enterpriseagentgateway.solo.io/v1alpha1",
            "kind": "EnterpriseAgentgatewayParameters",
            "metadata": {"name": "params", "namespace": "gw"},
            "spec": {"modelCatalog": {"sources": [{"configMap": {"name": "prices", "key": "c.yaml"}}]}},
        }
    )

    def rate() -> str | None:
        config = harness.config
        if config is None or not config.catalogs:
            return None
        return str(config.catalogs[0].providers["openai"]["gpt-4o"].input)

    await harness.until(lambda: rate() == "2.50")
    # Only that ConfigMap is read, by name: no list of every ConfigMap.
    reads = [r for r in kube.requests if "configmaps" in r.path]
    assert reads and all(r.query.get("fieldSelector") == "metadata.name=prices" for r in reads)
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "prices", "namespace": "gw"},
            "data": {"c.yaml": catalog.replace("'2.50'", "'3'")},
        }
    )
    await harness.until(lambda: rate() == "3")
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "prices", "namespace": "gw"},
            "data": {"c.yaml": "[]"},
        }
    )
    await harness.until(lambda: harness.config is not None and not harness.config.catalogs)
    (state,) = [s for s in harness.cluster.source.states if s.kind == "ConfigMap"]
    assert [f"{p.path}: {p.reason}" for p in state.problems] == ["data.c.yaml: must be a mapping, got a list"]


@pytest.mark.parametrize("megabytes", [2.5, 6])
async def test_a_huge_object_arrives_whole(harness: Harness, megabytes: float) -> None:
    """Real objects stop near 1.5 MiB (etcd); a watch line past the client's reader limit is
    logged and counted, and a fresh list (read whole) brings the object in."""
    kube = harness.kube
    kube.apply(budget("team-a", "small"))
    await harness.until(lambda: limits(harness.config) == {"team-a/small/daily": 100})
    note = "x" * int(megabytes * 1024 * 1024)
    kube.apply(budget("team-a", "huge", amount=7, annotations={"note": note}))
    await harness.until(lambda: limits(harness.config).get("team-a/huge/daily") == 7, timeout=10)
    if megabytes > 4:
        assert harness.metric("extproc_kubernetes_api_errors_total", kind="Budget", reason="malformed") >= 1
