"""Shared steps of the e2e tests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.support.http import HttpClient, Response
from tests.support.procs import Sidecar

DEMO = "/budget-demo/v1/chat/completions"
ESSAY = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "Write a 500-word essay on token budgets."}],
    "max_tokens": 800,
}
FIRST = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "In one sentence, what is a token budget?"}],
    "max_tokens": 60,
}


async def call(
    client: HttpClient, usage: tuple[int, int], body: dict[str, Any] = ESSAY, path: str = DEMO
) -> Response:
    return await client.post_json(path, body, {"x-mock-usage": f"{usage[0]},{usage[1]}"})


async def log_lines(sidecar: Sidecar, event: str, n: int = 1) -> list[dict[str, Any]]:
    for _ in range(100):
        lines = [line for line in sidecar.json_lines() if line.get("event") == event]
        if len(lines) >= n:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {event!r} log line; output:\n{sidecar.output()[-3000:]}")


def token_budget(name: str, amount: int = 100_000_000, failure_mode: str = "Open") -> str:
    """A Budget of one token entry (`tokens`) in team-a, and the policy enforcing it on the
    `budget-demo` route: the configuration tests that count spend exactly start from."""
    return f"""\
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {{name: {name}, namespace: team-a}}
spec:
  budgets:
  - name: tokens
    limit: {{unit: Tokens, amount: {amount}}}
    window: {{unit: Day}}
    onBudgetExceeded: Block
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetPolicy
metadata: {{name: enforce, namespace: team-a}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: budget-demo}}]
  failureMode: {failure_mode}
"""


async def redis_spend(url: str, config_dir: Path, entry: str | None = None, values: tuple = ()) -> int:
    """The spend Redis holds for an entry of the configuration in `config_dir` (the only
    entry when none is named), for the subject `values`: once two reads 50 ms apart agree
    (a sidecar records after its reply, so a record may still be on its way)."""
    from extproc.admission import counter_for
    from extproc.budgets import Charge
    from extproc.config import load_config
    from extproc.store import RedisStore

    entries = [e for b in load_config([config_dir]).budgets for e in b.entries if entry in (None, e.name)]
    (found,) = entries
    store = RedisStore(url, timeout_seconds=2, server_clock=True)
    counter = counter_for(Charge(entry=found, values=values))
    try:
        (state,) = await store.read([counter], time.time())
        for _ in range(40):
            await asyncio.sleep(0.05)
            (again,) = await store.read([counter], time.time())
            if again.spend == state.spend:
                break
            state = again
    finally:
        await store.close()
    return state.spend
