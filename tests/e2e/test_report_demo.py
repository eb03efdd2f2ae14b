"""The field report's demo, through a real Envoy and two sidecar replicas on one Redis."""

from __future__ import annotations

import json

import pytest

from tests.support.e2e import DEMO, ESSAY, FIRST, call, log_lines
from tests.support.http import HttpClient, MockOpenAI
from tests.support.procs import Envoy, Sidecar

pytestmark = pytest.mark.e2e


async def test_demo_admits_56_704_711_669_tokens_then_blocks_with_429(
    client_a: HttpClient, upstream: MockOpenAI, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    first = await call(client_a, (17, 39), FIRST)
    assert first.status == 200
    assert first.json()["usage"]["total_tokens"] == 56
    for usage, total in (((21, 683), 704), ((22, 689), 711), ((20, 649), 669)):
        r = await call(client_a, usage)
        assert r.status == 200, r.body
        assert r.json()["usage"]["total_tokens"] == total
    seen = upstream.stats.requests

    blocked = await call(client_a, (20, 600))

    assert blocked.status == 429
    assert blocked.headers["x-ratelimit-limit"] == "2000"
    assert blocked.headers["x-ratelimit-remaining"] == "0"
    reset = int(blocked.headers["x-ratelimit-reset"])
    assert 86_400 <= reset <= 86_400 + 900  # a day, plus at most one 15-minute bucket
    assert blocked.headers["retry-after"] == str(reset)
    error = blocked.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert "agentgateway-system/budget-demo/demo-token-block" in error["message"]
    assert upstream.stats.requests == seen, "the blocked request reached the upstream"


async def test_untargeted_route_keeps_answering_while_demo_route_is_blocked(
    client_a: HttpClient, upstream: MockOpenAI
) -> None:
    for _ in range(3):
        await call(client_a, (500, 500))
    assert (await call(client_a, (1, 1))).status == 429

    for _ in range(3):
        r = await call(client_a, (500, 500), path="/openai/v1/chat/completions")
        assert r.status == 200
        assert r.json()["usage"]["total_tokens"] == 1000


async def test_cost_of_a_21_in_683_out_gpt4o_call_is_logged_exactly(
    client_a: HttpClient, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    sidecar = replicas[0][0]
    before = len([x for x in sidecar.json_lines() if x.get("event") == "request"])
    r = await call(client_a, (21, 683))
    assert r.status == 200

    line = (await log_lines(sidecar, "request", before + 1))[-1]

    assert line["gen_ai.usage.cost_usd"] == "0.0068825"
    assert line["gen_ai.request.model"] == "gpt-4o"
    assert line["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert line["gen_ai.usage.input_tokens"] == 21
    assert line["gen_ai.usage.output_tokens"] == 683
    assert line["route"] == "budget-demo"
    assert line["http.status"] == 200


async def test_the_blocking_entry_logs_budget_exceeded_with_the_reports_fields(
    client_a: HttpClient, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    sidecar = replicas[0][0]
    await call(client_a, (1000, 1000))
    assert (await call(client_a, (1, 1))).status == 429

    lines = await log_lines(sidecar, "budget exceeded")
    block = [x for x in lines if x["budget_id"] == "agentgateway-system/budget-demo/demo-token-block"][-1]

    assert block["level"] == "warning"
    assert block["budget_action"] == "BLOCK"
    assert block["budget_unit"] == "TOKENS"
    assert block["budget_limit"] == "2000"
    assert block["budget_window"] == "DAILY"
    assert block["phase"] == "admission"
    assert block["outcome"] == "over_limit_block"


async def test_spend_through_one_replica_blocks_on_the_other(
    client_a: HttpClient, client_b: HttpClient, upstream: MockOpenAI
) -> None:
    assert (await call(client_a, (1000, 1000))).status == 200
    seen = upstream.stats.requests

    r = await call(client_b, (1, 1))

    assert r.status == 429
    assert r.headers["x-ratelimit-limit"] == "2000"
    assert upstream.stats.requests == seen


async def test_a_streamed_request_is_counted_and_the_injected_usage_chunk_is_hidden(
    client_a: HttpClient, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    body = {**ESSAY, "stream": True}
    r = await call(client_a, (900, 1000), body)
    assert r.status == 200
    events = [e for e in r.body.split(b"\n\n") if e.strip()]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
    assert chunks and all(c["choices"] for c in chunks), "the client saw the usage chunk it never asked for"
    assert all("usage" not in c or c["usage"] is None for c in chunks)

    # 1,900 tokens counted: one more small call fits, then the budget is spent.
    assert (await call(client_a, (50, 50))).status == 200
    assert (await call(client_a, (1, 1))).status == 429


async def test_a_client_that_asked_for_streamed_usage_still_sees_it(client_a: HttpClient) -> None:
    body = {**ESSAY, "stream": True, "stream_options": {"include_usage": True}}
    r = await call(client_a, (10, 20), body)
    events = [e for e in r.body.split(b"\n\n") if e.strip()]
    usage_chunks = [json.loads(e[6:]) for e in events[:-1] if b'"usage"' in e]
    assert usage_chunks[-1]["usage"]["total_tokens"] == 30
    assert usage_chunks[-1]["choices"] == []


async def test_cost_and_tokens_reach_envoys_access_log_as_dynamic_metadata(
    replicas: list[tuple[Sidecar, Envoy]], upstream: MockOpenAI, fresh_spend: None
) -> None:
    envoy = Envoy(upstream.port, [replicas[0][0].grpc_port])
    client = HttpClient("127.0.0.1", envoy.port)
    try:
        assert (await call(client, (21, 683))).status == 200
    finally:
        await client.close()
        envoy.stop()  # Envoy flushes its access log on exit, not per line

    lines = [x for x in envoy.json_lines() if x.get("route") == "budget-demo"]
    assert lines == [
        {
            "cost_usd": "0.0068825",
            "input_tokens": 21,
            "output_tokens": 683,
            "budget_id": None,
            "request_id": lines[0]["request_id"],
            "path": "/v1/chat/completions",
            "route": "budget-demo",
            "status": 200,
        }
    ]
    assert lines[0]["request_id"]  # Envoy's, the same the sidecar's request line carries


async def test_responses_carry_the_ratelimit_fields_and_a_blocked_requests_budget_reaches_the_access_log(
    replicas: list[tuple[Sidecar, Envoy]], upstream: MockOpenAI, fresh_spend: None
) -> None:
    sidecar = replicas[0][0]
    envoy = Envoy(upstream.port, [sidecar.grpc_port])
    client = HttpClient("127.0.0.1", envoy.port)
    try:
        admitted = await client.post_json(DEMO, ESSAY, {"x-mock-usage": "1000,1000", "x-request-id": "req-a"})
        assert admitted.status == 200
        # Added by Envoy from the sidecar's admission metadata: no response message for it.
        assert (
            admitted.headers["ratelimit-policy"]
            == '"agentgateway-system/budget-demo/demo-token-block";q=2000;w=86400'
        )
        remaining = int(admitted.headers["ratelimit"].split(";r=")[1].split(";")[0])
        assert 0 < remaining < 2000
        blocked = await client.post_json(DEMO, ESSAY, {"x-mock-usage": "1,1", "x-request-id": "req-b"})
        assert blocked.status == 429
        assert blocked.headers["x-should-retry"] == "false"  # a day away
        assert blocked.headers["ratelimit"].startswith(
            '"agentgateway-system/budget-demo/demo-token-block";r=0;t='
        )
    finally:
        await client.close()
        envoy.stop()

    lines = {x["request_id"]: x for x in envoy.json_lines() if x.get("route") == "budget-demo"}
    assert lines["req-a"]["status"] == 200 and lines["req-a"]["budget_id"] is None
    assert lines["req-b"]["status"] == 429
    assert lines["req-b"]["budget_id"] == "agentgateway-system/budget-demo/demo-token-block"
    # The sidecar's request line joins Envoy's by the request id, with what it was charged to.
    (line,) = [x for x in await log_lines(sidecar, "request", 1) if x.get("request_id") == "req-a"]
    assert "agentgateway-system/budget-demo/demo-token-block" in line["budget_ids"]
