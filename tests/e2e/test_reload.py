"""Live configuration through a real Envoy: budgets change under traffic, spend carries over.

The sidecar reads a folder laid out as the kubelet mounts a ConfigMap and is updated the
way the kubelet updates one (a new timestamped folder, then `..data` swapped by rename).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from extproc.admission import counter_for
from extproc.budgets import Charge
from extproc.config import load_config
from extproc.config.model import BudgetEntry
from extproc.store import open_store
from tests.support.configmap import MountedConfigMap
from tests.support.e2e import log_lines
from tests.support.http import HttpClient, MockOpenAI
from tests.support.procs import Envoy, Sidecar

pytestmark = pytest.mark.e2e

DEMO = "/budget-demo/v1/chat/completions"
# max_tokens 30 makes each hold at least the 30 tokens every call below spends, so
# concurrent calls cannot overshoot a limit: the counter stops exactly at it.
SMALL = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 30}
# Different splits of the same 30 tokens.
USAGES = ((10, 20), (5, 25), (29, 1), (15, 15))
NAMESPACE = "reload"

POLICY = f"""\
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetPolicy
metadata: {{name: enforce-demo, namespace: {NAMESPACE}}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: budget-demo}}]
  failureMode: Closed
"""


def budgets(amount: int | str, entry: str = "tokens") -> str:
    return f"""\
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {{name: live, namespace: {NAMESPACE}}}
spec:
  budgets:
  - name: {entry}
    limit:
      unit: Tokens
      amount: {amount}
    window: {{unit: Day}}
    onBudgetExceeded: Block
"""


AMOUNT_LINE = 9  # of `amount:` in budgets(), for the file:line a rejection names


@dataclass
class Rig:
    volume: MountedConfigMap
    sidecar: Sidecar
    envoy: Envoy
    client: HttpClient
    redis_url: str

    def publish(self, budget_text: str) -> None:
        self.volume.publish({"budgets.yaml": budget_text, "policy.yaml": POLICY})

    async def reloaded(self, n: int) -> None:
        await log_lines(self.sidecar, "configuration reloaded", n)

    async def spend(self, entry: BudgetEntry) -> tuple[int, int]:
        """(spend, held) of an entry's counter, read from Redis."""
        store = open_store(self.redis_url)
        try:
            (state,) = await store.read([counter_for(Charge(entry=entry, values=()))], time.time())
        finally:
            await store.close()
        return state.spend, state.held

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.sidecar.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()


def entry_of(root: Path) -> BudgetEntry:
    (resource,) = load_config([root]).budgets
    (entry,) = resource.entries
    return entry


@pytest.fixture()
async def rig(tmp_path: Path, e2e_redis: str, upstream: MockOpenAI, fresh_spend: None) -> AsyncIterator[Rig]:
    volume = MountedConfigMap(tmp_path / "budgets", {"budgets.yaml": budgets(300), "policy.yaml": POLICY})
    # Redis gets a deadline near Envoy's (0.5 s): on a busy test machine the 50 ms default can
    # trip, and these tests are about reloading, not about Redis being slow. Should it trip
    # anyway, failureMode Closed answers 503 rather than admitting on a local view.
    extra = ["--reload-interval", "0.1", "--store-timeout-ms", "400"]
    sidecar = Sidecar([str(volume.root)], redis_url=e2e_redis, extra=extra)
    envoy: Envoy | None = None
    client: HttpClient | None = None
    try:
        envoy = Envoy(upstream.port, [sidecar.grpc_port])
        client = HttpClient("127.0.0.1", envoy.port)
        yield Rig(volume, sidecar, envoy, client, e2e_redis)
    finally:
        if client is not None:
            await client.close()
        if envoy is not None:
            envoy.stop()
        sidecar.stop()


async def send(client: HttpClient, usage: tuple[int, int] = (10, 20)) -> tuple[int, int, str]:
    """One call: (status, tokens the upstream reported, the 429's x-ratelimit-limit)."""
    r = await client.post_json(DEMO, SMALL, {"x-mock-usage": f"{usage[0]},{usage[1]}"})
    tokens = r.json()["usage"]["total_tokens"] if r.status == 200 else 0
    return r.status, tokens, r.headers.get("x-ratelimit-limit", "")


async def spend_until_blocked(client: HttpClient, most: int = 100) -> int:
    """Sequential calls until one is refused; the tokens the admitted ones spent."""
    spent = 0
    for i in range(most):
        status, tokens, _ = await send(client, USAGES[i % len(USAGES)])
        if status == 429:
            return spent
        assert status == 200
        spent += tokens
    raise AssertionError(f"still admitted after {most} calls")


@dataclass
class Traffic:
    """Calls sent continuously by several clients, with every answer kept."""

    port: int
    clients: int = 4
    answers: list[tuple[float, int, int, str]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _run(self, worker: int) -> None:
        client = HttpClient("127.0.0.1", self.port)
        try:
            i = worker
            while not self._stop.is_set():
                status, tokens, limit = await send(client, USAGES[i % len(USAGES)])
                self.answers.append((time.monotonic(), status, tokens, limit))
                i += 1
                await asyncio.sleep(0.002 if status == 200 else 0.02)  # refused: no need to hammer
        finally:
            await client.close()

    def admitted(self) -> int:
        return sum(1 for _, status, _, _ in self.answers if status == 200)

    def tokens(self) -> int:
        return sum(tokens for _, _, tokens, _ in self.answers)

    async def until(self, what: str, predicate: Any, timeout: float = 10.0) -> float:
        """Waits for an answer satisfying `predicate(status, limit)`; returns when it came."""
        deadline = time.monotonic() + timeout
        looked = 0
        while time.monotonic() < deadline:
            for at, status, _, limit in self.answers[looked:]:
                if predicate(status, limit):
                    return at
                looked += 1
            await asyncio.sleep(0.01)
        raise AssertionError(f"traffic never saw {what}; statuses {self.statuses()}")

    async def until_admitted(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.admitted() < n:
            assert time.monotonic() < deadline, f"traffic never had {n} calls admitted: {self.statuses()}"
            await asyncio.sleep(0.005)

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for _, status, _, _ in self.answers:
            counts[status] = counts.get(status, 0) + 1
        return counts


async def test_raising_a_limit_under_traffic_keeps_every_token_counted_once(rig: Rig) -> None:
    rig.publish(budgets(3000))
    await rig.reloaded(1)
    traffic = Traffic(rig.envoy.port)
    traffic.start()
    try:
        # Raised while calls are being admitted: those in flight finish under the old snapshot.
        await traffic.until_admitted(20)
        rig.publish(budgets(4500))
        await rig.reloaded(2)
        blocked_at = await traffic.until("a 429 at 4500", lambda s, limit: s == 429 and limit == "4500")

        # Raised while the budget is blocked: it admits again, up to the new limit.
        rig.publish(budgets(6000))
        await rig.reloaded(3)
        await traffic.until("a 429 at 6000", lambda s, limit: s == 429 and limit == "6000")
    finally:
        await traffic.stop()
    assert set(traffic.statuses()) == {200, 429}, traffic.statuses()
    assert any(at > blocked_at and status == 200 for at, status, _, _ in traffic.answers)
    # Holds of calls in flight can refuse a call just short of the limit: top up, one by one.
    topped_up = await spend_until_blocked(rig.client)

    spend, held = await rig.spend(entry_of(rig.volume.root))

    assert spend == traffic.tokens() + topped_up == 6000  # none lost, none counted twice
    assert traffic.admitted() + topped_up // 30 == 200
    assert held == 0
    status, _, limit = await send(rig.client)
    assert (status, limit) == (429, "6000")


async def test_a_reload_that_fails_validation_keeps_the_last_good_configuration(rig: Rig) -> None:
    assert await spend_until_blocked(rig.client) == 300

    rig.publish(budgets(-600))

    (line,) = await log_lines(
        rig.sidecar, "configuration reload rejected; keeping the last good configuration"
    )
    assert line["level"] == "error"
    (problem,) = line["problems"]
    assert problem.startswith(
        f"{rig.volume.root / 'budgets.yaml'}:{AMOUNT_LINE}: spec.budgets[0].limit.amount: "
    )
    assert "-600" in problem
    status, _, limit = await send(rig.client)
    assert (status, limit) == (429, "300")  # still the old limit
    assert 'extproc_config_reloads_total{result="rejected"} 1.0' in rig.metrics()

    rig.publish(budgets(600))  # fixed: applies, and the spend so far still counts

    await rig.reloaded(1)
    assert await spend_until_blocked(rig.client) == 300
    assert 'extproc_config_reloads_total{result="applied"} 1.0' in rig.metrics()


async def test_renaming_an_entry_starts_a_fresh_counter_and_leaves_the_old_one(rig: Rig) -> None:
    old = entry_of(rig.volume.root)
    assert await spend_until_blocked(rig.client) == 300

    rig.publish(budgets(300, entry="tokens-renamed"))
    await rig.reloaded(1)

    assert await spend_until_blocked(rig.client) == 300  # a whole new allowance
    new = entry_of(rig.volume.root)
    assert await rig.spend(new) == (300, 0)
    assert await rig.spend(old) == (300, 0)  # not moved, not dropped: it ages out on its own


async def test_a_blocked_budget_admits_again_once_the_swap_is_seen(rig: Rig) -> None:
    # How fast that happens is measured, not asserted (README: about an interval + 0.1 s).
    assert await spend_until_blocked(rig.client) == 300
    published = time.monotonic()

    rig.publish(budgets(3000))

    status = 429
    while status == 429 and time.monotonic() - published < 30:  # a wait, not a speed claim
        status, _, _ = await send(rig.client)
    assert status == 200
