"""The chaos run: traffic through two Envoys and two sidecars while Redis is hung, killed and
restarted (AOF), partitioned (a proxy that drops every packet), and a sidecar is killed
during the outage; then overshoot under 64 concurrent requests, with Redis up and down.

Every response the client saw as 200 must be in Redis exactly once: `lost` counts those
missing, `double` the spend beyond what the upstream served at all (a response the client
did not see as 200, say the sidecar died under it, may or may not have been counted). No
times are asserted: `make chaos` prints the figures of a long run
(`python -m tests.e2e.chaos --requests 10000`, then a quarter of that on a Redis Cluster whose
master is killed half-way); `make test` runs short ones (tests/e2e/test_chaos.py) and asserts
lost = 0, double = 0 and the overshoot bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from extproc.admission import counter_for
from extproc.budgets import Charge
from extproc.config import load_config
from extproc.store import RedisStore
from tests.support.e2e import redis_spend
from tests.support.http import HttpClient, MockOpenAI
from tests.support.procs import Envoy, Sidecar
from tests.support.redis_server import RedisProcess, start_redis
from tests.support.tcp_proxy import TcpProxy

USAGE = (11, 20)
TOKENS = sum(USAGE)
# max_tokens above what the upstream will report: a hold covers the request it stands for.
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 40}
PATH = "/budget-demo/v1/chat/completions"
TIGHT = 20 * TOKENS  # the overshoot entry's limit: twenty requests

CONFIG = f"""\
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetDimensions
metadata: {{name: dimensions}}
spec:
  dimensions:
    phase: {{header: x-phase}}
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {{name: chaos, namespace: team-a}}
spec:
  budgets:
  - name: all
    limit: {{unit: Tokens, amount: 4000000000}}
    window: {{unit: Day}}
    onBudgetExceeded: Block
  - name: tight
    subject: {{phase: "*"}}
    limit: {{unit: Tokens, amount: {TIGHT}}}
    window: {{unit: Day}}
    onBudgetExceeded: Block
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetPolicy
metadata: {{name: enforce, namespace: team-a}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: budget-demo}}]
  failureMode: Open
"""


@dataclass
class Figures:
    requests: int = 0
    statuses: Tally[str] = field(default_factory=Tally)
    served: int = 0  # requests the upstream answered
    redis_tokens: int = 0
    lost: int = 0  # 200 responses whose tokens are not in Redis
    double: int = 0  # requests' worth of tokens beyond what the upstream served
    faults: list[str] = field(default_factory=list)
    admitted: Tally[str] = field(default_factory=Tally)  # 200s of each overshoot burst
    overshoot_up: int = 0  # requests admitted beyond the limit, Redis up
    overshoot_outage: int = 0  # the same while Redis is away
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    def lines(self) -> list[str]:
        return [
            f"requests: {self.requests} {dict(sorted(self.statuses.items()))}, upstream served {self.served}",
            f"faults: {', '.join(self.faults)}",
            f"tokens in Redis: {self.redis_tokens}; of 200s: {self.ok * TOKENS}",
            f"lost = {self.lost}, double = {self.double}",
            f"64 concurrent on a {TIGHT // TOKENS}-request entry across 2 replicas: Redis up "
            f"{self.admitted['up']} admitted, {self.overshoot_up} beyond the limit (bound 1); Redis away "
            f"{self.admitted['away']} admitted, {self.overshoot_outage} beyond (bound 2: one per replica)",
            f"seconds: {self.seconds:.1f}",
        ]


class World:
    """Redis behind a proxy, two sidecars with journals, two Envoys, one upstream."""

    def __init__(self, folder: Path, upstream: MockOpenAI) -> None:
        self.folder = folder
        self.upstream = upstream
        (folder / "config").mkdir(parents=True, exist_ok=True)
        (folder / "config" / "budgets.yaml").write_text(CONFIG)
        self.redis: RedisProcess = start_redis(extra=["--appendonly", "yes", "--appendfsync", "always"])
        self.proxy = TcpProxy(self.redis.port)
        self.url = f"redis://127.0.0.1:{self.proxy.port}/0"
        self.sidecars = [self._sidecar(i) for i in range(2)]
        self.envoys = [Envoy(upstream.port, [s.grpc_port]) for s in self.sidecars]

    def _sidecar(self, i: int, ports: tuple[int, int] | None = None) -> Sidecar:
        # A deadline with room for this machine: Envoy, two sidecars, Redis, the proxy and the
        # load share two cores, and a slow answer that looks like an outage measures nothing.
        extra = ["--journal-dir", str(self.folder / f"journal-{i}"), "--store-timeout-ms", "400"]
        # Started again during a partition: ready (today) means Redis answers, alive is enough.
        ready = "/healthz" if ports else "/readyz"
        return Sidecar(
            [str(self.folder / "config")], redis_url=self.url, extra=extra, ports=ports, ready=ready
        )

    def restart_sidecar(self, i: int) -> None:
        old = self.sidecars[i]
        old.kill()
        self.sidecars[i] = self._sidecar(i, (old.grpc_port, old.admin_port))

    def stop(self) -> None:
        for envoy in self.envoys:
            envoy.stop()
        for sidecar in self.sidecars:
            sidecar.stop()
        self.proxy.stop()
        if self.redis.alive():
            os.kill(self.redis.popen.pid, signal.SIGCONT)
        self.redis.stop()

    async def tokens(self, subject: tuple[tuple[str, str], ...] = (), entry: str = "all") -> int:
        return await redis_spend(self.redis.url, self.folder / "config", entry, subject)


async def _send(client: HttpClient, headers: dict[str, str] | None = None) -> str:
    try:
        response = await asyncio.wait_for(
            client.post_json(PATH, BODY, {"x-mock-usage": f"{USAGE[0]},{USAGE[1]}", **(headers or {})}), 10
        )
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
        await client.close()  # a broken connection: the next request opens another
        return "error"
    return str(response.status)


async def _faults(world: World, total: int, figures: Figures, pause: float) -> None:
    """Each fault once the traffic is that far along, each lasting `pause` seconds."""

    async def at(fraction: float) -> None:
        while sum(figures.statuses.values()) < fraction * total:
            await asyncio.sleep(0.02)

    steps: list[tuple[float, str, Callable[[], Awaitable[None]]]] = []

    async def hang() -> None:
        os.kill(world.redis.popen.pid, signal.SIGSTOP)
        await asyncio.sleep(pause)
        os.kill(world.redis.popen.pid, signal.SIGCONT)

    async def kill_redis() -> None:
        world.redis.kill()
        await asyncio.sleep(pause)
        await asyncio.to_thread(world.redis.start_again)  # its AOF brings the spend back

    async def partition() -> None:
        world.proxy.blackhole()
        await asyncio.sleep(pause)
        world.proxy.heal()

    async def partition_and_kill_a_sidecar() -> None:
        world.proxy.blackhole()
        await asyncio.sleep(pause / 2)
        await asyncio.to_thread(world.restart_sidecar, 0)  # killed with spend unconfirmed
        await asyncio.sleep(pause / 2)
        world.proxy.heal()

    steps = [
        (0.1, "Redis hung (SIGSTOP)", hang),
        (0.3, "Redis killed and restarted (AOF)", kill_redis),
        (0.5, "partition (packets dropped)", partition),
        (0.7, "partition with a sidecar SIGKILLed", partition_and_kill_a_sidecar),
    ]
    for fraction, name, fault in steps:
        await at(fraction)
        figures.faults.append(name)
        await fault()


async def _burst(world: World, phase: str, figures: Figures) -> None:
    """64 concurrent requests on a fresh 20-request entry (its own subject), half through
    each replica."""
    clients = [HttpClient("127.0.0.1", world.envoys[n % 2].port) for n in range(64)]
    try:
        statuses = await asyncio.gather(*(_send(c, {"x-phase": phase}) for c in clients))
        figures.admitted[phase] = statuses.count("200")
    finally:
        for c in clients:
            await c.close()


async def _beyond_limit(world: World, phase: str) -> int:
    """Requests' worth of tokens the entry took beyond its limit, once replays landed."""
    spent = await _settled(lambda: world.tokens((("phase", phase),), "tight"))
    return max(0, spent - TIGHT + TOKENS - 1) // TOKENS


async def _settled(read: Callable[[], Awaitable[int | None]], seconds: float = 30.0) -> int:
    """The value once it stopped changing for two seconds (replays have landed); a read
    that failed (None: a cluster still electing a new master) never counts as settled.
    -1 when no read succeeded."""
    deadline = time.monotonic() + seconds
    last, since = await read(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        value = await read()
        if value != last or value is None:
            last, since = value, time.monotonic()
        elif time.monotonic() - since > 2.0:
            break
    return -1 if last is None else last


async def run(folder: Path, upstream: MockOpenAI, requests: int, concurrency: int, pause: float) -> Figures:
    figures = Figures(requests=requests)
    started = time.monotonic()
    served_before = upstream.stats.requests
    world = World(folder, upstream)
    try:
        await asyncio.sleep(6)  # both replicas heartbeat at least once: they know of each other
        await asyncio.gather(
            _Traffic(world.envoys).run(requests, concurrency, figures.statuses),
            _faults(world, requests, figures, pause),
        )
        figures.redis_tokens = await _settled(world.tokens)
        figures.served = upstream.stats.requests - served_before
        figures.lost = max(0, figures.ok * TOKENS - figures.redis_tokens) // TOKENS
        figures.double = max(0, figures.redis_tokens - figures.served * TOKENS) // TOKENS
        await asyncio.sleep(6)  # replays done, every replica heartbeating again
        await _burst(world, "up", figures)
        figures.overshoot_up = await _beyond_limit(world, "up")
        world.proxy.blackhole()
        try:
            await asyncio.wait_for(_burst(world, "away", figures), 60)
        finally:
            world.proxy.heal()
        figures.overshoot_outage = await _beyond_limit(world, "away")
    finally:
        world.stop()
    figures.seconds = time.monotonic() - started
    return figures


@dataclass
class ClusterFigures:
    requests: int = 0
    statuses: Tally[str] = field(default_factory=Tally)
    served: int = 0
    redis_tokens: int = 0
    lost: int = 0
    double: int = 0

    def lines(self) -> list[str]:
        return [
            f"cluster: requests {self.requests} {dict(sorted(self.statuses.items()))}, "
            f"upstream served {self.served}, a master killed and its replica promoted mid-way",
            f"cluster: tokens in Redis {self.redis_tokens}; of 200s {self.statuses.get('200', 0) * TOKENS}; "
            f"lost = {self.lost}, double = {self.double}",
        ]


async def run_cluster(folder: Path, upstream: MockOpenAI, requests: int, concurrency: int) -> ClusterFigures:
    """Two sidecars on a three-master Redis Cluster; the master holding the budget's
    counter is killed half-way through the traffic."""
    from tests.support.redis_server import RedisCluster

    figures = ClusterFigures(requests=requests)
    (folder / "config").mkdir(parents=True, exist_ok=True)
    (folder / "config" / "budgets.yaml").write_text(CONFIG)
    cluster = RedisCluster()
    sidecars: list[Sidecar] = []
    envoys: list[Envoy] = []
    served_before = upstream.stats.requests
    try:
        for i in range(2):
            extra = ["--journal-dir", str(folder / f"journal-{i}"), "--store-timeout-ms", "400"]
            sidecars.append(Sidecar([str(folder / "config")], redis_url=cluster.url, extra=extra))
            envoys.append(Envoy(upstream.port, [sidecars[-1].grpc_port]))
        (resource,) = load_config([folder / "config"]).budgets
        (entry,) = [e for e in resource.entries if e.name == "all"]
        counter = counter_for(Charge(entry=entry, values=()))
        store = RedisStore(cluster.url, timeout_seconds=2, server_clock=True)
        victim = cluster.master_of(store.keys_for(counter.id)[0])
        traffic = _Traffic(envoys)

        async def kill_half_way() -> None:
            while sum(figures.statuses.values()) < requests // 2:
                await asyncio.sleep(0.02)
            victim.kill()

        await asyncio.gather(traffic.run(requests, concurrency, figures.statuses), kill_half_way())

        async def read() -> int | None:
            try:
                (state,) = await store.read([counter], time.time())
            except Exception:
                return None  # the failover is not over yet
            return state.spend

        figures.redis_tokens = await _settled(read, 60)
        await store.close()
        figures.served = upstream.stats.requests - served_before
        figures.lost = max(0, figures.statuses.get("200", 0) * TOKENS - figures.redis_tokens) // TOKENS
        figures.double = max(0, figures.redis_tokens - figures.served * TOKENS) // TOKENS
    finally:
        for envoy in envoys:
            envoy.stop()
        for sidecar in sidecars:
            sidecar.stop()
        cluster.stop()
    return figures


class _Traffic:
    def __init__(self, envoys: list[Envoy]) -> None:
        self.envoys = envoys

    async def run(self, total: int, concurrency: int, statuses: Tally[str]) -> None:
        sent = 0

        async def worker(n: int) -> None:
            nonlocal sent
            client = HttpClient("127.0.0.1", self.envoys[n % len(self.envoys)].port)
            try:
                while sent < total:
                    sent += 1
                    statuses[await _send(client)] += 1
            finally:
                await client.close()

        await asyncio.gather(*(worker(n) for n in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description="the chaos run, printing its figures")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds each fault lasts")
    args = parser.parse_args()

    async def go() -> tuple[Figures, ClusterFigures]:
        upstream = MockOpenAI()
        await upstream.start()
        try:
            folder = Path(tempfile.mkdtemp(prefix="chaos-"))
            figures = await run(folder / "standalone", upstream, args.requests, args.concurrency, args.pause)
            on_cluster = await run_cluster(folder / "cluster", upstream, args.requests // 4, args.concurrency)
            return figures, on_cluster
        finally:
            await upstream.stop()

    figures, on_cluster = asyncio.run(go())
    for line in [*figures.lines(), *on_cluster.lines()]:
        print(line)
    lost, double = figures.lost + on_cluster.lost, figures.double + on_cluster.double
    print(json.dumps({"lost": lost, "double": double}))


if __name__ == "__main__":
    main()
