"""Requests/s and latency through a real Envoy, with and without the ext_proc filter.

    make bench            # or: .venv/bin/python -m bench.load --seconds 10 --connections 8

Starts a mock OpenAI upstream (its own process), the sidecar (in-memory store unless
--redis), and two Envoys on the same upstream: one with the budget filter on an
enforced route, one without the filter. Then drives each with the same closed-loop
load (N keep-alive connections, each sending the next request when the last answered)
and prints requests/s, p50 and p99. Everything shares this machine's cores: compare
the two rows of one run, not runs across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from tests.support.http import HttpClient
from tests.support.procs import Envoy, Proc, Sidecar, free_port, wait_for
from tests.support.redis_server import start_redis

BUDGETS = Path(__file__).with_name("budgets.yaml")

BODY = json.dumps(
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hi in five words."}], "max_tokens": 20}
).encode()


async def _drive(port: int, path: str, seconds: float, connections: int) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        client = HttpClient("127.0.0.1", port)
        headers = {"x-user": f"user-{i % 4}", "x-mock-usage": "12,20"}
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.request("POST", path, BODY, headers)
                if r.status != 200:
                    raise RuntimeError(f"status {r.status}: {r.body[:200]!r}")
                latencies.append(time.perf_counter() - t0)
        finally:
            await client.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return latencies


def _row(name: str, latencies: list[float], seconds: float, baseline: float | None) -> tuple[str, float]:
    """The printed row, and its req/s; `baseline`: plain Envoy's req/s in this run."""
    lat = sorted(latencies)
    rate = len(lat) / seconds
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    ratio = f"{rate / baseline:>9.2f}" if baseline else f"{'':>9}"
    return f"{name:<34} {rate:>9.0f} {p50:>9.2f} {p99:>9.2f} {ratio}", rate


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--redis", action="store_true", help="spend in a real redis-server, not in memory")
    ap.add_argument("--workers", type=int, default=1, help="sidecar processes (needs --redis when > 1)")
    ap.add_argument("--only", choices=["none", "enforced", "untouched"], help="run one scenario only")
    args = ap.parse_args()

    cfg = BUDGETS
    procs: list[Proc] = []
    redis = start_redis() if args.redis else None
    try:
        up_port = free_port()
        upstream = Proc("upstream", [sys.executable, "-m", "tests.support.http", str(up_port)])
        procs.append(upstream)
        wait_for(lambda: "upstream on" in upstream.output(), "mock upstream", proc=upstream)
        extra = ["--log-level", "warning", "--workers", str(args.workers)]
        sidecar = Sidecar([str(cfg)], redis_url=redis.url if redis else None, extra=extra)
        procs.append(sidecar)
        with_filter = Envoy(up_port, [sidecar.grpc_port])
        procs.append(with_filter)
        start = "          - name: envoy.filters.http.ext_proc\n"
        end = "          - name: envoy.filters.http.router\n"
        without = Envoy(up_port, [sidecar.grpc_port], lambda t: t[: t.index(start)] + t[t.index(end) :])
        procs.append(without)

        async def run() -> list[str]:
            rows = []
            baseline: float | None = None
            demo, untouched = "/budget-demo/v1/chat/completions", "/openai/v1/chat/completions"
            scenarios = {
                "none": ("envoy, no ext_proc filter", without.port, demo),
                "enforced": ("envoy + budgets (enforced route)", with_filter.port, demo),
                "untouched": ("envoy + budgets (untouched route)", with_filter.port, untouched),
            }
            for key, (name, port, path) in scenarios.items():
                if args.only and key != args.only:
                    continue
                await _drive(port, path, 1.0, args.connections)  # warm up
                lat = await _drive(port, path, args.seconds, args.connections)
                row, rate = _row(name, lat, args.seconds, baseline)
                baseline = baseline or (rate if key == "none" else None)
                rows.append(row)
            return rows

        rows = asyncio.run(run())
        store = "redis" if redis else "memory"
        print(
            f"{args.connections} connections, {args.seconds:.0f} s each,"
            f" store={store}, workers={args.workers}"
        )
        print(f"{'':<34} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'vs none':>9}")
        for row in rows:
            print(row)
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        if redis:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
