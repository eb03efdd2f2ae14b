"""`extproc serve --source kubernetes` through a real Envoy, against a server that speaks the
Kubernetes API's wire protocol (tests/support/kube_api.py; no kube-apiserver installs here).

A budget created as an object is enforced, edited, then deleted; an Istio-named and an
Envoy Gateway-named route are enforced; another namespace's route and another gateway's
route are not; status shows on the objects. Envoy is envoy/envoy-gateways.yaml (two
gateways of team-a), the sidecar keeps spend in memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.e2e import call
from tests.support.http import HttpClient, MockOpenAI
from tests.support.kube_api import KubeApiServer
from tests.support.procs import Envoy, Sidecar

pytestmark = pytest.mark.e2e

OURS = "budgets.extproc.dev/v1alpha1"
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 30}
ALLOWANCE = (60, 40)  # 100 tokens a call


def budget(amount: int) -> dict[str, Any]:
    return {
        "apiVersion": OURS,
        "kind": "Budget",
        "metadata": {"name": "per-route", "namespace": "team-a"},
        "spec": {
            "budgets": [
                {
                    "name": "per-route",
                    "subject": {"route": "*"},
                    "limit": {"unit": "Tokens", "amount": amount},
                    "window": {"unit": "Day"},
                    "onBudgetExceeded": "Block",
                }
            ]
        },
    }


def policy(name: str, kind: str, target: str) -> dict[str, Any]:
    ref = {"group": "gateway.networking.k8s.io", "kind": kind, "name": target}
    return {
        "apiVersion": OURS,
        "kind": "BudgetPolicy",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {"targetRefs": [ref], "discovery": {"namespaces": {"from": "Same"}}},
    }


@dataclass
class Cluster:
    kube: KubeApiServer
    sidecar: Sidecar
    gw_a: HttpClient
    gw_b: HttpClient


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, upstream: MockOpenAI
) -> Iterator[tuple[KubeApiServer, Sidecar, Envoy]]:
    folder: Path = tmp_path_factory.mktemp("kubernetes")
    with KubeApiServer(bookmark_interval=0.5) as kube:
        for ns in ("team-a", "team-b", "extproc"):
            kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for kind, name in (("Gateway", "gw-a"), ("Gateway", "gw-b"), ("HTTPRoute", "chat")):
            kube.apply(
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": kind,
                    "metadata": {"name": name, "namespace": "team-a"},
                    "spec": {},
                }
            )
        kube.apply(policy("chat", "HTTPRoute", "chat"))
        kube.apply(policy("gateway-a", "Gateway", "gw-a"))
        kubeconfig = kube.write_kubeconfig(folder / "kubeconfig")
        extra = ["--source", "kubernetes", "--kubeconfig", str(kubeconfig), "--lease-namespace", "extproc"]
        sidecar = Sidecar([], extra=extra)
        try:
            envoy = Envoy(
                upstream.port, [sidecar.grpc_port], template="envoy-gateways.yaml", extra_ports=("GW_B_PORT",)
            )
        except BaseException:
            sidecar.stop()
            raise
        yield kube, sidecar, envoy
        envoy.stop()
        sidecar.stop()


@pytest.fixture(scope="module")
async def cluster(world: tuple[KubeApiServer, Sidecar, Envoy]) -> AsyncIterator[Cluster]:
    kube, sidecar, envoy = world
    gw_a = HttpClient("127.0.0.1", envoy.port)
    gw_b = HttpClient("127.0.0.1", envoy.ports["GW_B_PORT"])
    yield Cluster(kube, sidecar, gw_a, gw_b)
    await gw_a.close()
    await gw_b.close()


async def status_of(client: HttpClient, prefix: str) -> int:
    return (await call(client, ALLOWANCE, BODY, f"{prefix}v1/chat/completions")).status


async def eventually(check: Any, timeout: float = 2.0) -> float:
    """Seconds until `check()` (async) is true; fails after `timeout`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def conditions(kube: KubeApiServer, kind: str, name: str) -> dict[str, str]:
    obj = kube.get(OURS, kind, name, "team-a") or {}
    status = obj.get("status") or {}
    found = {c["type"]: c["status"] for c in status.get("conditions", [])}
    for ancestor in status.get("ancestors", []):
        found |= {
            f"{ancestor['ancestorRef']['name']}:{c['type']}": c["status"] for c in ancestor["conditions"]
        }
    return found


async def test_a_budget_object_is_enforced_then_edited_then_deleted(cluster: Cluster) -> None:
    kube = cluster.kube
    assert await status_of(cluster.gw_b, "/istio/") == 200  # no budget yet: the policy alone caps nothing

    kube.apply(budget(100))

    async def spent_out() -> bool:  # each call spends 100: once the budget is there, the next is refused
        return await status_of(cluster.gw_b, "/istio/") == 429

    await eventually(spent_out)
    # Both gateways' naming of team-a's HTTPRoute chat are enforced, each on its own allowance.
    assert [await status_of(cluster.gw_b, "/eg/") for _ in range(2)] == [200, 429]
    # Another namespace's HTTPRoute of the same name, and a route only gw-a's policy targets, seen on gw-b.
    assert [await status_of(cluster.gw_b, "/other-namespace/") for _ in range(3)] == [200, 200, 200]
    assert [await status_of(cluster.gw_b, "/shared/") for _ in range(3)] == [200, 200, 200]
    assert [await status_of(cluster.gw_a, "/shared/") for _ in range(2)] == [200, 429]

    kube.apply(budget(1000))  # edited: the spend so far stays counted, the limit grows

    async def admitted() -> bool:
        return await status_of(cluster.gw_b, "/istio/") == 200

    assert await eventually(admitted) < 2.0

    kube.delete(OURS, "Budget", "per-route", "team-a")

    async def unlimited() -> bool:
        return [await status_of(cluster.gw_a, "/shared/") for _ in range(3)] == [200, 200, 200]

    await eventually(unlimited)


async def test_status_shows_on_the_objects(cluster: Cluster) -> None:
    kube = cluster.kube
    kube.apply(budget(100))

    async def shown() -> bool:
        return conditions(kube, "Budget", "per-route") == {
            "Accepted": "True",
            "Enforced": "True",
        } and conditions(kube, "BudgetPolicy", "chat") == {"chat:Accepted": "True", "chat:Attached": "True"}

    await eventually(shown, timeout=5)
    lease = kube.get("coordination.k8s.io/v1", "Lease", "extproc-budgets-status", "extproc")
    assert lease is not None and lease["spec"]["holderIdentity"]
