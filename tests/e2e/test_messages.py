"""Blocking messages a request costs, through a real Envoy: three when usage is read from the
response body alone (the default: request headers and body, the response body), four with
`--read-response-headers`; the spend is the same either way, and in that mode a brotli
response (a coding no body shows by its first bytes) is offered upstream and decoded."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import brotli
import pytest
import redis

from tests.support.e2e import redis_spend, token_budget
from tests.support.http import HttpClient, MockOpenAI
from tests.support.procs import Envoy, Sidecar

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
USAGE = {"x-mock-usage": "11,20"}


def messages(sidecar: Sidecar) -> dict[str, float]:
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.admin_port}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("extproc_messages_total{"):
                kind = line.split('kind="', 1)[1].split('"', 1)[0]
                out[kind] = float(line.rsplit(" ", 1)[1])
    return {k: v for k, v in out.items() if v}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "budgets.yaml").write_text(token_budget("messages"))
    return folder


@pytest.mark.parametrize("read_headers", [False, True], ids=["body-only", "read-response-headers"])
async def test_a_plain_and_a_streamed_call_cost_the_messages_they_need(
    read_headers: bool, config_dir: Path, e2e_redis: str, upstream: MockOpenAI
) -> None:
    redis.Redis.from_url(e2e_redis).flushall()
    extra = ["--read-response-headers"] if read_headers else []
    sidecar = Sidecar([str(config_dir)], redis_url=e2e_redis, extra=extra)
    envoy = Envoy(upstream.port, [sidecar.grpc_port])
    client = HttpClient("127.0.0.1", envoy.port)
    try:
        plain = await client.post_json("/budget-demo/v1/chat/completions", CHAT, USAGE)
        assert plain.status == 200 and b'"usage"' in plain.body
        per_plain = messages(sidecar)
        streamed = await client.post_json("/budget-demo/v1/chat/completions", {**CHAT, "stream": True}, USAGE)
        assert streamed.status == 200 and streamed.body.endswith(b"data: [DONE]\n\n")
        assert b'"usage":{' not in streamed.body  # the injected usage chunk stays hidden
        assert await redis_spend(e2e_redis, config_dir) == 2 * 31
        headers = 1 if read_headers else 0
        assert per_plain == {
            "request_headers": 1,
            "request_body": 1,
            **({"response_headers": 1} if read_headers else {}),
            "response_body": per_plain["response_body"],
        }
        assert per_plain["response_body"] <= 2  # one chunk, and perhaps an empty end of stream
        assert messages(sidecar).get("response_headers", 0) == 2 * headers
    finally:
        await client.close()
        envoy.stop()
        sidecar.stop()


async def test_with_response_headers_read_a_brotli_response_is_decoded_and_counted(
    config_dir: Path, e2e_redis: str, upstream: MockOpenAI
) -> None:
    redis.Redis.from_url(e2e_redis).flushall()
    sidecar = Sidecar([str(config_dir)], redis_url=e2e_redis, extra=["--read-response-headers"])
    envoy = Envoy(upstream.port, [sidecar.grpc_port])
    client = HttpClient("127.0.0.1", envoy.port)
    try:
        headers = {**USAGE, "accept-encoding": "br", "x-mock-encoding": "br"}
        r = await client.post_json("/budget-demo/v1/chat/completions", {**CHAT, "stream": True}, headers)
        assert r.status == 200 and r.headers.get("content-encoding") == "br"
        assert upstream.stats.headers[-1]["accept-encoding"] == "br"
        text = bytes(brotli.decompress(r.body))
        assert text.endswith(b"data: [DONE]\n\n") and b'"usage":{' not in text
        assert await redis_spend(e2e_redis, config_dir) == 31
    finally:
        await client.close()
        envoy.stop()
        sidecar.stop()
