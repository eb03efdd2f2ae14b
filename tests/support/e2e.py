"""Shared steps of the e2e tests."""

from __future__ import annotations

import asyncio
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
