"""Routes as gateways name them, scoped as Gateway API scopes them, through a real Envoy.

envoy/envoy-gateways.yaml is one Envoy standing for two gateways of team-a: gw-a says who
it is in the ext_proc call's gRPC metadata, gw-b in its virtual host's metadata as Envoy
Gateway writes it. Team-a's policies target HTTPRoute `chat` and Gateway `gw-a`; every
route has its own 100 tokens a day (`route: "*"`), so each route shows on its own whether
it is enforced. One sidecar with in-memory spend, started for this module.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.e2e import call, log_lines
from tests.support.http import HttpClient, MockOpenAI
from tests.support.procs import Envoy, Sidecar

pytestmark = pytest.mark.e2e

BUDGETS = """
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {name: per-route, namespace: team-a}
spec:
  budgets:
  - name: per-route
    subject: {route: "*"}
    limit: {unit: Tokens, amount: 100}
    window: {unit: Day}
    onBudgetExceeded: Block
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetPolicy
metadata: {name: chat, namespace: team-a}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: chat}]
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetPolicy
metadata: {name: gateway-a, namespace: team-a}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw-a}]
"""

# max_tokens 30: each hold is small, so one call of 100 tokens spends a route's allowance.
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 30}
ALLOWANCE = (60, 40)  # 100 tokens: the whole of a route's day


@dataclass
class Gateways:
    sidecar: Sidecar
    envoy: Envoy
    gw_a: HttpClient
    gw_b: HttpClient

    def unenforced(self) -> dict[str, float]:
        """extproc_unenforced_requests_total by route, from the sidecar's /metrics."""
        url = f"http://127.0.0.1:{self.sidecar.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
        counts = {}
        for line in text.splitlines():
            if line.startswith('extproc_unenforced_requests_total{route="'):
                labels, value = line.rsplit(" ", 1)
                counts[labels.split('"')[1]] = float(value)
        return counts


@pytest.fixture(scope="module")
def envoy_and_sidecar(
    tmp_path_factory: pytest.TempPathFactory, upstream: MockOpenAI
) -> Iterator[tuple[Sidecar, Envoy]]:
    folder: Path = tmp_path_factory.mktemp("route-names")
    (folder / "budgets.yaml").write_text(BUDGETS)
    sidecar = Sidecar([str(folder)])
    try:
        envoy = Envoy(
            upstream.port, [sidecar.grpc_port], template="envoy-gateways.yaml", extra_ports=("GW_B_PORT",)
        )
    except BaseException:
        sidecar.stop()
        raise
    yield sidecar, envoy
    envoy.stop()
    sidecar.stop()


@pytest.fixture(scope="module")
async def gateways(envoy_and_sidecar: tuple[Sidecar, Envoy]) -> AsyncIterator[Gateways]:
    sidecar, envoy = envoy_and_sidecar
    gw_a = HttpClient("127.0.0.1", envoy.port)
    gw_b = HttpClient("127.0.0.1", envoy.ports["GW_B_PORT"])
    yield Gateways(sidecar, envoy, gw_a, gw_b)
    await gw_a.close()
    await gw_b.close()


async def statuses(client: HttpClient, prefix: str, calls: int = 3) -> list[int]:
    """The status of each of `calls` calls, each spending a route's whole allowance."""
    return [
        (await call(client, ALLOWANCE, BODY, f"{prefix}v1/chat/completions")).status for _ in range(calls)
    ]


async def test_a_route_named_as_istio_names_an_httproute_rule_is_enforced(gateways: Gateways) -> None:
    assert await statuses(gateways.gw_b, "/istio/") == [200, 429, 429]
    (line,) = [x for x in await log_lines(gateways.sidecar, "request") if x["route"] == "team-a.chat.0"]
    # gw-b's identity came from its virtual host's metadata, as Envoy Gateway writes it.
    assert (line["route"], line["gateway"]) == ("team-a.chat.0", "team-a/gw-b")


async def test_a_route_named_as_envoy_gateway_names_an_httproute_match_is_enforced(
    gateways: Gateways,
) -> None:
    assert await statuses(gateways.gw_b, "/eg/") == [200, 429, 429]


async def test_another_namespaces_httproute_of_the_same_name_is_not_enforced(gateways: Gateways) -> None:
    assert await statuses(gateways.gw_b, "/other-namespace/") == [200, 200, 200]


async def test_a_gateway_ref_enforces_its_gateways_routes_and_not_the_same_route_on_another(
    gateways: Gateways,
) -> None:
    # The same route name on both gateways: gw-a (named in gRPC metadata) is the target.
    assert await statuses(gateways.gw_a, "/shared/") == [200, 429, 429]
    assert await statuses(gateways.gw_b, "/shared/") == [200, 200, 200]


async def test_requests_on_unenforced_routes_are_counted_by_route_on_the_metrics(gateways: Gateways) -> None:
    before = gateways.unenforced()
    await statuses(gateways.gw_b, "/misnamed/", calls=2)
    await statuses(gateways.gw_b, "/other-namespace/", calls=1)
    await statuses(gateways.gw_b, "/shared/", calls=1)
    await statuses(gateways.gw_b, "/istio/", calls=1)  # enforced (200 or 429): not counted
    after = gateways.unenforced()
    grew = {
        route: after[route] - before.get(route, 0) for route in after if after[route] != before.get(route, 0)
    }
    # The misnamed route shows by its name, beside another namespace's and another gateway's.
    assert grew == {"chat-completions": 2, "team-b.chat.0": 1, "team-a.shared.0": 1}
