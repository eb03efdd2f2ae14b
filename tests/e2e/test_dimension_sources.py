"""The other dimension sources through a real Envoy: a JWT's list claim, a body field, an API key.

The route `budget-demo` is enforced by this module's own configuration (a temporary folder);
Envoy runs envoy/envoy-jwt.yaml, so every request carries a verified token.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.http import HttpClient, MockOpenAI, Response
from tests.support.jwt import SigningKey, bearer, new_key
from tests.support.procs import ROOT, Envoy, Sidecar

pytestmark = pytest.mark.e2e

PATH = "/budget-demo/v1/chat/completions"

CONFIG = """
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetDimensions
metadata: {name: dimensions}
spec:
  dimensions:
    groups: {metadata: {namespace: envoy.filters.http.jwt_authn, path: [jwt_payload, groups]}}
    end-user: {body: [user]}
    key: {apiKey: {header: x-api-key}}
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {name: sources, namespace: ai}
spec:
  budgets:
  - name: per-group
    subject: {groups: "*"}
    limit: {unit: Tokens, amount: 1000}
    window: {unit: Day}
    onBudgetExceeded: Block
  - name: research
    subject: {groups: research}
    limit: {unit: Tokens, amount: 5000}
    window: {unit: Day}
    onBudgetExceeded: Block
  - name: per-end-user
    subject: {end-user: "*"}
    limit: {unit: Tokens, amount: 1000}
    window: {unit: Day}
    onBudgetExceeded: Block
  - name: per-key
    subject: {key: "*"}
    limit: {unit: Tokens, amount: 1000}
    window: {unit: Day}
    onBudgetExceeded: Block
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetPolicy
metadata: {name: sources, namespace: ai}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: budget-demo}]
"""


@dataclass
class World:
    sidecar: Sidecar
    envoy: Envoy
    key: SigningKey


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstream: MockOpenAI, e2e_redis: str) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("sources")
    (folder / "config.yaml").write_text(CONFIG)
    key = new_key()
    sidecar = Sidecar([str(folder)], redis_url=e2e_redis)
    try:
        envoy = Envoy(
            upstream.port, [sidecar.grpc_port], template="envoy-jwt.yaml", values={"JWKS": key.jwks()}
        )
    except BaseException:
        sidecar.stop()
        raise
    yield World(sidecar, envoy, key)
    envoy.stop()
    sidecar.stop()


@pytest.fixture()
async def client(world: World, fresh_spend: None) -> AsyncIterator[HttpClient]:
    c = HttpClient("127.0.0.1", world.envoy.port)
    yield c
    await c.close()


async def ask(
    client: HttpClient,
    world: World,
    tokens: int,
    *,
    groups: list[str] | None = None,
    user: str | None = None,
    api_key: str | None = None,
) -> Response:
    claims = {"groups": groups} if groups is not None else {}
    body: dict[str, object] = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
    }
    if user is not None:
        body["user"] = user
    headers = {"x-mock-usage": f"{tokens},0", **bearer(world.key.token("someone", **claims))}
    if api_key is not None:
        headers["x-api-key"] = api_key
    return await client.post_json(PATH, body, headers)


async def test_a_list_claim_charges_each_group_and_an_exact_entry_overrides_star_per_value(
    client: HttpClient, world: World
) -> None:
    # ops and research: ops is charged to per-group's allowance, research to its own entry.
    assert (await ask(client, world, 1000, groups=["ops", "research"])).status == 200
    blocked = await ask(client, world, 1, groups=["ops"])
    assert blocked.status == 429
    assert blocked.headers["x-budget-id"] == "ai/sources/per-group"
    assert (await ask(client, world, 1000, groups=["research"])).status == 200  # 2,000 of its 5,000
    assert (await ask(client, world, 1, groups=["design"])).status == 200  # its own allowance
    # A member of a spent group is blocked whatever other groups it is in.
    assert (await ask(client, world, 1, groups=["design", "ops"])).status == 429


async def test_a_body_field_keys_each_end_user_its_own_allowance(client: HttpClient, world: World) -> None:
    assert (await ask(client, world, 1000, user="u-1")).status == 200
    blocked = await ask(client, world, 1, user="u-1")
    assert blocked.status == 429
    assert blocked.headers["x-budget-id"] == "ai/sources/per-end-user"
    assert (await ask(client, world, 1, user="u-2")).status == 200


async def test_an_api_key_is_a_wallet_known_only_by_its_hash(
    client: HttpClient, world: World, e2e_redis: str, tmp_path: Path
) -> None:
    secret = "sk-live-abc123-not-for-logs"
    assert (await ask(client, world, 1000, api_key=secret)).status == 200
    blocked = await ask(client, world, 1, api_key=secret)
    assert blocked.status == 429
    assert blocked.headers["x-budget-id"] == "ai/sources/per-key"
    assert (await ask(client, world, 1, api_key="sk-live-another")).status == 200

    digest = "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]
    (tmp_path / "config.yaml").write_text(CONFIG)
    table = subprocess.run(
        [sys.executable, "-m", "extproc.cli", "spend", "--config", str(tmp_path), "--redis-url", e2e_redis],
        capture_output=True, text=True, cwd=ROOT, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert f"key={digest}" in table
    assert secret not in table
    assert secret not in world.sidecar.output()
