"""One streamed call per API family through a real Envoy, counted until the budget blocks.

The demo budget is 2,000 tokens a day; each call here reports 600 input + 500 output, so
two calls are admitted and the third is a 429. The client gets the upstream's bytes
unchanged, except an injected usage chunk it never asked for.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from decimal import Decimal

import brotli
import pytest

from tests.support import fixtures_anthropic, fixtures_bedrock, fixtures_gemini, fixtures_openai
from tests.support.e2e import log_lines
from tests.support.http import HttpClient
from tests.support.procs import Envoy, Sidecar

pytestmark = pytest.mark.e2e

USAGE = {"x-mock-usage": "600,500"}
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"


@dataclass(frozen=True)
class Family:
    name: str
    path: str
    body: dict[str, object]
    # What the client must receive, byte for byte (the upstream's stream, less what we hid).
    expected: bytes
    api: str
    model: str
    # The coding the client accepts and the upstream uses when offered it.
    encoding: str = ""
    # The coding the client receives: br is not offered upstream when only the body is
    # read (no bytes show it), so that response comes as identity.
    delivered: str | None = None


CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
before, _usage_chunk, done = fixtures_openai.chat_stream_parts("gpt-4o", 600, 500, include_usage=True)

FAMILIES = [
    Family(
        "openai-chat-gzip",
        "/budget-demo/v1/chat/completions",
        CHAT,
        before + done,
        "openai.chat",
        "gpt-4o",
        "gzip",
    ),
    Family(
        "openai-responses",
        "/budget-demo/v1/responses",
        {"model": "gpt-4o", "input": "hi", "stream": True},
        fixtures_openai.responses_stream("gpt-4o", 600, 500),
        "openai.responses",
        "gpt-4o",
    ),
    Family(
        "openai-completions-br",
        "/budget-demo/v1/completions",
        {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "stream": True, "max_tokens": 10},
        b"".join(fixtures_openai.completions_stream_parts("gpt-3.5-turbo-instruct", 600, 500)[::2]),
        "openai.completions",
        "gpt-3.5-turbo-instruct",
        "br",
        delivered="",
    ),
    Family(
        "anthropic",
        "/budget-demo/v1/messages",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
        fixtures_anthropic.stream_body("claude-sonnet-4-5", 600, 500),
        "anthropic.messages",
        "claude-sonnet-4-5",
    ),
    Family(
        "gemini-sse",
        "/budget-demo/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        fixtures_gemini.stream_body("gemini-2.5-flash", 600, 500, sse=True),
        "gemini.generate",
        "gemini-2.5-flash",
    ),
    Family(
        "gemini-json-array",
        "/budget-demo/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        fixtures_gemini.stream_body("gemini-2.5-flash", 600, 500, sse=False),
        "gemini.generate",
        "gemini-2.5-flash",
    ),
    Family(
        "bedrock-converse-stream",
        f"/budget-demo/model/{BEDROCK_MODEL.replace(':', '%3A')}/converse-stream",
        {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"maxTokens": 100}},
        fixtures_bedrock.stream_body(600, 500),
        "bedrock.converse",
        BEDROCK_MODEL,
    ),
]


def decoded(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "br":
        return bytes(brotli.decompress(body))
    return body


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
async def test_each_api_familys_stream_is_counted_until_the_budget_blocks(
    family: Family, client_a: HttpClient, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    sidecar = replicas[0][0]
    coding = (
        {"x-mock-encoding": family.encoding, "accept-encoding": family.encoding} if family.encoding else {}
    )
    headers = {**USAGE, **coding}
    delivered = family.encoding if family.delivered is None else family.delivered
    before_lines = len([x for x in sidecar.json_lines() if x.get("event") == "request"])

    first = await client_a.post_json(family.path, family.body, headers)

    assert first.status == 200
    assert first.headers.get("content-encoding", "") == delivered
    assert decoded(first.body, delivered) == family.expected
    line = (await log_lines(sidecar, "request", before_lines + 1))[-1]
    assert line["api"] == family.api
    assert line["gen_ai.usage.input_tokens"] == 600
    assert line["gen_ai.usage.output_tokens"] == 500
    assert line["streamed"] is True
    assert Decimal(line["gen_ai.usage.cost_usd"]) > 0, "a streamed call must never be $0"

    assert (await client_a.post_json(family.path, family.body, headers)).status == 200  # 1,100 < 2,000
    blocked = await client_a.post_json(family.path, family.body, headers)  # 2,200 >= 2,000
    assert blocked.status == 429
    assert json.loads(blocked.body)["error"]["code"] == "budget_exceeded"


async def test_codings_we_cannot_decode_are_not_offered_upstream(client_a: HttpClient, upstream) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    r = await client_a.post_json(
        "/budget-demo/v1/messages", body, {**USAGE, "accept-encoding": "zstd, gzip;q=0.8"}
    )
    assert r.status == 200
    assert upstream.stats.headers[-1]["accept-encoding"] == "gzip;q=0.8"


async def test_an_api_we_do_not_parse_is_admitted_and_logged_unparsed(
    client_a: HttpClient, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    r = await client_a.post_json("/budget-demo/v1/audio/speech", {"model": "tts-1", "input": "hello"}, USAGE)
    assert r.status == 200
    line = (await log_lines(replicas[0][0], "unparsed"))[-1]
    assert line["path"] == "/budget-demo/v1/audio/speech"
    assert line["route"] == "budget-demo"
