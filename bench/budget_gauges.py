"""What the per-budget gauges cost: one refresh (list the subjects seen, read their states)
against a real redis-server, for N subjects of a `"*"` entry.

    .venv/bin/python -m bench.budget_gauges [--subjects 1000 10000]

Prints milliseconds per refresh (the gauges refresh in the background, every
--budget-gauges-interval seconds, 15 by default; a scrape only serves the last reading).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from decimal import Decimal

from extproc.admission import Snapshot, counter_for
from extproc.budgets import Charge
from extproc.config.model import Action, BudgetEntry, BudgetResource, Config, Unit, Window
from extproc.gauges import BudgetGauges
from extproc.store import Claim, RedisStore
from tests.support.redis_server import start_redis

ENTRY = BudgetEntry(
    "bench", "users", "per-user", Unit.TOKENS, Decimal(10**9), Window.DAY, Action.BLOCK, {"user": "*"}
)


async def measure(url: str, subjects: int, max_series: int) -> tuple[float, int]:
    store = RedisStore(url, timeout_seconds=5, server_clock=True)
    try:
        now = time.time()
        claims = [Claim(counter_for(Charge(ENTRY, (("user", f"u{i:06d}"),))), 100) for i in range(subjects)]
        for start in range(0, subjects, 500):
            await asyncio.gather(
                *(store.record([c], f"h{start}-{j}", now) for j, c in enumerate(claims[start : start + 500]))
            )
        config = Config(budgets=(BudgetResource("bench", "users", (ENTRY,)),))
        gauges = BudgetGauges(lambda: Snapshot(config), store, max_series=max_series)
        await gauges.refresh()  # warm
        runs = 5
        t0 = time.perf_counter()
        for _ in range(runs):
            await gauges.refresh()
        return (time.perf_counter() - t0) / runs * 1000, len(gauges.readings)
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--max-series", type=int, default=1000)
    args = ap.parse_args()
    for subjects in args.subjects:
        redis = start_redis()
        try:
            ms, exported = asyncio.run(measure(redis.url, subjects, args.max_series))
        finally:
            redis.stop()
        print(f"{subjects:>6} subjects seen, {exported} exported: {ms:8.1f} ms a refresh")


if __name__ == "__main__":
    main()
