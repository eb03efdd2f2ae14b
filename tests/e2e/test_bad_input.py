"""Bad input through a real Envoy: a clear log line, the request proceeds, no spend lost."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.e2e import call, log_lines
from tests.support.http import HttpClient, MockOpenAI
from tests.support.procs import Envoy, Sidecar

pytestmark = pytest.mark.e2e

DEMO = "/budget-demo/v1/chat/completions"


def metric(sidecar: Sidecar, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.admin_port}/metrics", timeout=2) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_malformed_request_json_proceeds_to_upstream_and_the_stream_survives(
    client_a: HttpClient, upstream: MockOpenAI, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    seen = upstream.stats.requests
    r = await client_a.request(
        "POST", DEMO, b'{"model": "gpt-4o", "messages": [', {"content-type": "application/json"}
    )
    assert r.status == 400  # the upstream's answer, not ours
    assert upstream.stats.requests == seen + 1
    assert (await call(client_a, (10, 10))).status == 200  # same connection, next request fine
    problems = [x for x in replicas[0][0].json_lines() if x.get("event") == "request body not read"]
    assert problems and problems[-1]["problem"]


async def test_unknown_model_is_priced_zero_with_a_warning_but_its_tokens_count(
    client_a: HttpClient, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    sidecar = replicas[0][0]
    body = {"model": "acme-llm-9000", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    r = await call(client_a, (1000, 999), body)  # 1,999 of 2,000 tokens
    assert r.status == 200
    warnings = await log_lines(sidecar, "model not in catalog; priced at $0")
    assert warnings[-1]["model"] == "acme-llm-9000"
    assert metric(sidecar, "extproc_unpriced_model_total") >= 1
    assert (await call(client_a, (1, 1), body)).status == 200  # under the limit: admitted
    assert (await call(client_a, (1, 1), body)).status == 429  # 2,001: the unpriced tokens counted


async def test_response_without_usage_and_non_llm_paths_pass_untouched(
    client_a: HttpClient, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    r = await client_a.post_json(DEMO, {"model": "gpt-4o", "messages": []}, {"x-mock-no-usage": "1"})
    assert r.status == 200
    assert r.json() == {"id": "x", "choices": []}
    models = await client_a.request("GET", "/budget-demo/v1/models")
    assert models.status == 200
    empty = await client_a.request("POST", DEMO, b"")
    assert empty.status == 200


async def test_oversized_request_body_is_refused_by_envoy_not_by_a_crash(
    client_a: HttpClient, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    huge = b'{"model":"gpt-4o","messages":[{"role":"user","content":"' + b"x" * (9 * 1024 * 1024) + b'"}]}'
    r = await client_a.request("POST", DEMO, huge)
    assert r.status == 413
    fresh = HttpClient("127.0.0.1", replicas[0][1].port)
    try:
        assert (await call(fresh, (5, 5))).status == 200
    finally:
        await fresh.close()


async def test_a_client_that_disconnects_mid_stream_has_its_hold_released(
    client_a: HttpClient, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    sidecar, envoy = replicas[0]
    assert (await call(client_a, (700, 800))).status == 200  # 1,500 of 2,000 spent
    released_before = metric(sidecar, "extproc_holds_released_unspent_total")

    # A streamed call holding ~1,900 tokens; the client leaves after the first bytes.
    reader, writer = await asyncio.open_connection("127.0.0.1", envoy.port)
    body = json.dumps(
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 1900,
            "stream": True,
        }
    ).encode()
    writer.write(
        f"POST {DEMO} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-mock-delay-ms: 200\r\nx-mock-usage: 10,1900\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    writer.close()

    for _ in range(100):
        if metric(sidecar, "extproc_holds_released_unspent_total") > released_before:
            break
        await asyncio.sleep(0.05)
    assert metric(sidecar, "extproc_holds_released_unspent_total") > released_before
    # Were the hold still there, 1,500 spent + 1,900 held would block this one.
    assert (await call(client_a, (10, 10))).status == 200


@pytest.fixture(scope="module")
def faulty_envoy(replicas: list[tuple[Sidecar, Envoy]], upstream: MockOpenAI) -> Iterator[Envoy]:
    """Envoy with a fault filter before ext_proc: a local reply reaches us at the response phase."""
    fault = """          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: {header_abort: {}, percentage: {numerator: 100}}
"""
    marker = "          - name: envoy.filters.http.ext_proc\n"
    envoy = Envoy(
        upstream.port, [replicas[0][0].grpc_port], lambda text: text.replace(marker, fault + marker)
    )
    yield envoy
    envoy.stop()


async def test_a_stream_that_starts_at_the_response_phase_is_passed_through(
    faulty_envoy: Envoy, fresh_spend: None
) -> None:
    client = HttpClient("127.0.0.1", faulty_envoy.port)
    try:
        r = await client.post_json(
            DEMO, {"model": "gpt-4o", "messages": []}, {"x-envoy-fault-abort-request": "401"}
        )
        assert r.status == 401
        ok = await call(client, (5, 5))
        assert ok.status == 200
    finally:
        await client.close()


async def test_malformed_response_json_reaches_the_client_unchanged_and_releases_the_hold(
    client_a: HttpClient, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    sidecar = replicas[0][0]
    before = metric(sidecar, "extproc_parse_problems_total")
    r = await client_a.post_json(DEMO, {"model": "gpt-4o", "messages": []}, {"x-mock-malformed": "1"})
    assert r.status == 200
    assert r.body == b'{"id":"x","usage":{"prompt_tok'
    assert metric(sidecar, "extproc_parse_problems_total") > before
    assert (await call(client_a, (10, 10))).status == 200
