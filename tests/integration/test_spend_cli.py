"""`extproc spend` reads each entry's and each subject's spend from a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from extproc.admission import counter_for
from extproc.budgets import match
from extproc.cli import main
from extproc.config import load_config
from extproc.store import Claim, RedisStore

CONFIG = """
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {name: teams, namespace: ai}
spec:
  budgets:
  - name: per-user
    subject: {user: "*"}
    limit: {unit: Tokens, amount: 1000}
    window: {unit: Day}
    onBudgetExceeded: Block
  - name: everyone
    limit: {unit: USD, amount: 5}
    window: {unit: Week}
    onBudgetExceeded: Audit
"""


async def _spend(path: Path, redis_url: str) -> None:
    config = load_config([path])
    store = RedisStore(redis_url)
    try:
        for user, tokens, nanos in (("alice", 400, 2_500_000_000), ("bob", 1000, 10_000)):
            charges = match(config.budgets, {"user": user})
            claims = [
                Claim(counter_for(c), tokens if c.entry.unit.value == "Tokens" else nanos) for c in charges
            ]
            await store.record(claims, f"hold-{user}", time.time())
    finally:
        await store.close()


def test_spend_lists_each_wildcard_subject_seen_with_spend_limit_remaining_and_reset(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(CONFIG)
    asyncio.run(_spend(path, redis_url))

    assert main(["spend", "--config", str(path), "--redis-url", redis_url]) == 0

    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert rows[0][:3] == ["BUDGET", "SUBJECT", "UNIT"]
    by_subject = {(r[0], r[1]): r for r in rows[1:]}
    alice = by_subject[("ai/teams/per-user", "user=alice")]
    assert alice[5:8] == ["400", "1000", "600"] and alice[8:] == ["not", "blocked"]
    bob = by_subject[("ai/teams/per-user", "user=bob")]
    assert bob[5:8] == ["1000", "1000", "0"]
    assert 86_400 <= int(bob[8]) <= 86_400 + 900
    everyone = by_subject[("ai/teams/everyone", "-")]
    assert everyone[5:8] == ["2.50001", "5", "2.49999"]


def test_spend_as_json_for_finops_tooling(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(CONFIG)
    asyncio.run(_spend(path, redis_url))

    assert main(["spend", "--config", str(path), "--redis-url", redis_url, "--output", "json"]) == 0

    rows = {(r["budget_id"], r["subject"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("ai/teams/per-user", "user=alice")] == {
        "budget_id": "ai/teams/per-user",
        "subject": "user=alice",
        "unit": "Tokens",
        "window": "Day",
        "action": "Block",
        "spend": "400",
        "limit": "1000",
        "remaining": "600",
        "reset_seconds": 0,
    }
    assert rows[("ai/teams/everyone", "-")]["spend"] == "2.50001"
