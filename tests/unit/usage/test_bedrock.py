"""AWS Bedrock Converse and ConverseStream: requests, buffered responses, event streams.

Fixtures (`tests/support/fixtures_bedrock.py`) follow the Bedrock Runtime API reference.
Costs are asserted exactly against genai-prices' "aws" provider, whose rates per 1M tokens
(input / output / cache read / cache write) are, for the models used here:

- `regional.anthropic.claude-3-5-sonnet-20240620-v1:0`: 3 / 15 / 0.30 / 3.75
- `regional.anthropic.claude-sonnet-4-20250514-v1:0`: 3 / 15 / 0.30 / 3.75
- `amazon.nova-pro-v1:0`: 0.80 / 3.20 / 0.20 / (input)
- `global.anthropic.claude-sonnet-4-5-20250929-v1:0`: 3 / 15; its regional entry 3.30 / 16.50
- `regional.anthropic.claude-opus-4-5-v1:0`: 5.50 / 27.50
"""

from __future__ import annotations

import itertools
import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.catalog import Catalog
from extproc.usage import LlmRequest, Usage, UsageStream
from extproc.usage.api import ApiCall
from extproc.usage.bedrock import (
    API,
    ConverseStream,
    estimate_input_tokens,
    parse_request,
    parse_response,
    pricing_model,
)
from extproc.usage.eventstream import MESSAGE_CRC_MISMATCH, PRELUDE_CRC_MISMATCH, TRUNCATED, encode_message
from tests.support import fixtures_bedrock as fx

SONNET_35 = "anthropic.claude-3-5-sonnet-20240620-v1:0"
SONNET_4_US = "us.anthropic.claude-sonnet-4-20250514-v1:0"
NOVA_PRO = "amazon.nova-pro-v1:0"
SONNET_45 = "anthropic.claude-sonnet-4-5-20250929-v1:0"
OPUS_45 = "anthropic.claude-opus-4-5-20251101-v1:0"

CATALOG = Catalog()


def converse(model: str | None = SONNET_35) -> ApiCall:
    return ApiCall(api="bedrock.converse", provider="aws", model=model)


def converse_stream(model: str | None = SONNET_35) -> ApiCall:
    return ApiCall(api="bedrock.converse", provider="aws", model=model, streaming=True)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def run(stream: ConverseStream, chunks: list[bytes]) -> bytes:
    return b"".join([stream.feed(chunk) for chunk in chunks]) + stream.finish()


def price(usage: Usage, model: str | None) -> Decimal:
    return CATALOG.price(usage, model, "aws").usd


# A cached Claude call: 1,200 fresh input tokens, 4,000 read from the cache, 800 written.
CACHED = {"input_tokens": 1200, "output_tokens": 350, "cache_read_tokens": 4000, "cache_write_tokens": 800}
CACHED_USAGE = Usage(
    input_tokens=6000, output_tokens=350, cached_input_tokens=4000, cache_creation_input_tokens=800
)
# 1200 * 3 + 4000 * 0.30 + 800 * 3.75 + 350 * 15 = 3600 + 1200 + 3000 + 5250 micro-USD.
CACHED_COST = Decimal("0.01305")


# --- Requests -------------------------------------------------------------------------------


def test_a_request_yields_max_tokens_the_paths_model_and_an_estimate() -> None:
    body = fx.request_body("Why budget LLM spend at the gateway?", system="You are a concise assistant.")
    parsed = parse_request(body, converse())
    # 36 + 28 bytes of text and 4 of role ("user") -> 17 tokens, plus 4 for the one message.
    assert parsed.request == LlmRequest(
        model=SONNET_35, max_tokens=512, stream=False, estimated_input_tokens=21
    )
    assert (parsed.rewritten_body, parsed.injected_usage, parsed.problem) == (None, False, None)


def test_a_converse_stream_request_streams_by_its_path() -> None:
    parsed = parse_request(fx.request_body(), converse_stream(SONNET_4_US))
    assert parsed.request.stream
    assert parsed.request.model == SONNET_4_US
    # Usage is always in the metadata event: nothing to inject.
    assert parsed.rewritten_body is None and not parsed.injected_usage


def test_an_arn_in_the_path_becomes_the_model_id() -> None:
    arn = f"arn:aws:bedrock:us-east-1::foundation-model/{SONNET_35}"
    assert parse_request(fx.request_body(), converse(arn)).request.model == SONNET_35


def test_a_request_without_inference_config_has_no_max_tokens() -> None:
    parsed = parse_request(fx.request_body(max_tokens=None, system=None), converse())
    assert parsed.request.max_tokens is None
    assert parsed.problem is None


def test_the_estimate_counts_text_tools_and_results_but_not_media_or_signatures() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"text": "abcd" * 5},
                {"image": {"format": "png", "source": {"bytes": "A" * 4000}}},
                {"document": {"format": "pdf", "name": "report", "source": {"bytes": "B" * 4000}}},
                {"cachePoint": {"type": "default"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"reasoningContent": {"reasoningText": {"text": "abcd", "signature": "S" * 400}}},
                {"toolUse": {"toolUseId": "t1", "name": "get", "input": {"city": "Paris"}}},
            ],
        },
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}]}}]},
    ]
    system = [{"text": "abcdefgh"}, {"cachePoint": {"type": "default"}}]
    # Text 20 + 4 + 5 + 8, tool use "t1" "get" "Paris" 10, result id 2, roles 4 + 9 + 4:
    # 66 bytes -> 17 tokens; 3 messages -> 12.
    assert estimate_input_tokens(messages, system) == 29


def test_multibyte_text_counts_its_utf8_bytes() -> None:
    # 9 bytes of text and 4 of role -> 4 tokens, plus 4 for the message.
    assert estimate_input_tokens([{"role": "user", "content": [{"text": "日本語"}]}]) == 8


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "empty body"),
        (b"{not json", "malformed JSON"),
        (b"[]", "body is not a JSON object"),
        (b'{"messages": {}}', "messages is not a list"),
        (b'{"system": "be brief"}', "system is not a list"),
        (b'{"inferenceConfig": 5}', "inferenceConfig is not an object"),
        (
            b'{"inferenceConfig": {"maxTokens": -1}}',
            "inferenceConfig.maxTokens is not a non-negative integer",
        ),
        (
            b'{"inferenceConfig": {"maxTokens": true}}',
            "inferenceConfig.maxTokens is not a non-negative integer",
        ),
    ],
)
def test_unreadable_requests_are_admitted_with_a_problem(body: bytes, problem: str) -> None:
    parsed = parse_request(body, converse_stream())
    assert parsed.problem == problem
    assert parsed.request.model == SONNET_35 and parsed.request.stream
    assert parsed.rewritten_body is None


# --- Buffered responses ---------------------------------------------------------------------


def test_a_plain_response_yields_usage_and_the_paths_model() -> None:
    parsed = parse_response(fx.response_body(input_tokens=21, output_tokens=683), converse())
    assert parsed.usage == Usage(input_tokens=21, output_tokens=683)
    assert parsed.model == SONNET_35
    assert parsed.problem is None
    assert price(parsed.usage, parsed.model) == Decimal("0.010308")  # 21 * 3 + 683 * 15 micro-USD


def test_cache_reads_and_writes_join_the_input_once_and_price_at_their_rates() -> None:
    parsed = parse_response(fx.response_body(**CACHED), converse())
    assert parsed.usage == CACHED_USAGE
    # Every input token counted once: the budget's total_tokens equals Bedrock's totalTokens.
    assert parsed.usage.total_tokens == 6350 == fx.usage_object(1200, 350, 4000, 800)["totalTokens"]
    cost = CATALOG.price(parsed.usage, parsed.model, "aws")
    assert cost.usd == CACHED_COST
    assert dict(cost.components) == {
        "input": Decimal("0.0036"),
        "cached_input": Decimal("0.0012"),
        "cache_write": Decimal("0.003"),
        "output": Decimal("0.00525"),
        "reasoning": Decimal(0),
    }


@pytest.mark.parametrize(
    ("model_id", "catalog_entry", "usd"),
    [
        (SONNET_35, "regional.anthropic.claude-3-5-sonnet-20240620-v1:0", Decimal("0.0105")),
        (SONNET_4_US, "regional.anthropic.claude-sonnet-4-20250514-v1:0", Decimal("0.0105")),
        (NOVA_PRO, "amazon.nova-pro-v1:0", Decimal("0.0024")),
        ("us.amazon.nova-pro-v1:0", "amazon.nova-pro-v1:0", Decimal("0.0024")),
        (f"global.{SONNET_45}", "global.anthropic.claude-sonnet-4-5-20250929-v1:0", Decimal("0.0105")),
        (f"us.{SONNET_45}", "regional.anthropic.claude-sonnet-4-5-20250929-v1:0", Decimal("0.01155")),
        (SONNET_45, "regional.anthropic.claude-sonnet-4-5-20250929-v1:0", Decimal("0.01155")),
        (
            f"arn:aws:bedrock:us-east-1::foundation-model/{OPUS_45}",
            "regional.anthropic.claude-opus-4-5-v1:0",
            Decimal("0.01925"),
        ),
        (
            f"arn:aws:bedrock:us-west-2:123456789012:inference-profile/global.{SONNET_45}",
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            Decimal("0.0105"),
        ),
    ],
)
def test_common_model_ids_price_exactly_as_genai_prices_aws_entries(
    model_id: str, catalog_entry: str, usd: Decimal
) -> None:
    parsed = parse_response(fx.response_body(input_tokens=1000, output_tokens=500), converse(model_id))
    cost = CATALOG.price(parsed.usage, parsed.model, "aws")
    assert (cost.status.value, cost.provider, cost.model) == ("builtin", "aws", catalog_entry)
    assert cost.usd == usd


def test_a_model_arn_would_be_unpriced_without_pricing_model() -> None:
    arn = f"arn:aws:bedrock:us-east-1::foundation-model/{OPUS_45}"
    usage = Usage(input_tokens=1000, output_tokens=500)
    assert CATALOG.price(usage, arn, "aws").usd == 0
    assert CATALOG.price(usage, pricing_model(arn), "aws").usd == Decimal("0.01925")


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        (SONNET_35, SONNET_35),
        (SONNET_4_US, SONNET_4_US),
        # The cross-region prefix stays: global and regional profiles price differently.
        (f"global.{SONNET_45}", f"global.{SONNET_45}"),
        (f"arn:aws:bedrock:us-east-1::foundation-model/{SONNET_35}", SONNET_35),
        (f"arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.{SONNET_35}", f"eu.{SONNET_35}"),
        (f"arn:aws-us-gov:bedrock:us-gov-west-1::foundation-model/{SONNET_35}", SONNET_35),
        # Opaque resources keep their ARN: only a user catalog can say what they cost.
        (
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
        ),
        (
            "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abcdef123456",
            "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abcdef123456",
        ),
        ("", None),
        (None, None),
    ],
)
def test_pricing_model(model_id: str | None, expected: str | None) -> None:
    assert pricing_model(model_id) == expected


def test_stripping_the_global_prefix_would_over_charge() -> None:
    usage = Usage(input_tokens=1000, output_tokens=500)
    assert price(usage, f"global.{SONNET_45}") < price(usage, SONNET_45)


def test_an_error_body_is_an_error_response() -> None:
    parsed = parse_response(fx.error_body(), converse())
    assert (parsed.usage, parsed.model, parsed.problem) == (None, SONNET_35, "error response")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "empty body"),
        (b"<html>", "malformed JSON"),
        (b'{"output": {}, "stopReason": "end_turn"}', "no usage"),
        (b'{"usage": []}', "usage is not an object"),
        (b'{"usage": {}}', "usage has no token counts"),
        (b'{"usage": {"inputTokens": "5"}}', "usage.inputTokens is not a non-negative integer"),
    ],
)
def test_responses_without_readable_usage_say_why(body: bytes, problem: str) -> None:
    parsed = parse_response(body, converse())
    assert (parsed.usage, parsed.problem) == (None, problem)


def test_a_bad_cache_count_is_a_problem_but_the_rest_is_read() -> None:
    body = json.dumps({"usage": {"inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": -3}}).encode()
    parsed = parse_response(body, converse())
    assert parsed.usage == Usage(input_tokens=10, output_tokens=5)
    assert parsed.problem == "usage.cacheReadInputTokens is not a non-negative integer"


def test_a_whole_converse_stream_body_reads_as_a_stream() -> None:
    parsed = parse_response(fx.stream_body(**CACHED), converse_stream())
    assert (parsed.usage, parsed.model, parsed.problem) == (CACHED_USAGE, SONNET_35, None)


# --- Streams --------------------------------------------------------------------------------

STREAM = fx.stream_body(**CACHED, text="Budgets at the gateway: café, 日本語, 🎉.")


def test_a_converse_stream_yields_usage_from_its_metadata_event() -> None:
    stream = API.stream(converse_stream(), hide_usage_chunk=False)
    assert run(stream, [STREAM]) == STREAM
    assert (stream.usage, stream.model, stream.problems) == (CACHED_USAGE, SONNET_35, [])
    assert price(stream.usage, stream.model) == CACHED_COST


def test_the_stream_is_a_usage_stream_and_never_hides_anything() -> None:
    for hide in (False, True):
        stream: UsageStream = API.stream(converse_stream(), hide_usage_chunk=hide)
        chunks = split_at(STREAM, [5, 40, 41, 200])
        for chunk in chunks:
            assert stream.feed(chunk) is chunk
        assert stream.finish() == b""
        assert stream.usage == CACHED_USAGE


def test_every_two_chunk_cut_gives_the_same_usage() -> None:
    for cut in range(len(STREAM) + 1):
        stream = ConverseStream(converse_stream())
        assert run(stream, [STREAM[:cut], STREAM[cut:]]) == STREAM, cut
        assert (stream.usage, stream.problems) == (CACHED_USAGE, []), cut


def test_byte_by_byte_chunks_give_the_same_usage() -> None:
    stream = ConverseStream(converse_stream())
    assert run(stream, [STREAM[i : i + 1] for i in range(len(STREAM))]) == STREAM
    assert stream.usage == CACHED_USAGE


@settings(max_examples=300)
@given(st.lists(st.integers(0, 4000), max_size=40))
def test_any_chunking_gives_the_same_usage_and_output(cuts: list[int]) -> None:
    stream = ConverseStream(converse_stream(SONNET_4_US))
    out = run(stream, split_at(STREAM, [cut % (len(STREAM) + 1) for cut in cuts]))
    assert out == STREAM
    assert (stream.usage, stream.model, stream.problems) == (CACHED_USAGE, SONNET_4_US, [])


@settings(max_examples=100)
@given(
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.lists(st.integers(0, 4000), max_size=10),
)
def test_any_counts_read_back_exactly(
    fresh: int, output: int, read: int, written: int, cuts: list[int]
) -> None:
    body = fx.stream_body(fresh, output, cache_read_tokens=read, cache_write_tokens=written)
    stream = ConverseStream(converse_stream())
    run(stream, split_at(body, [cut % (len(body) + 1) for cut in cuts]))
    assert stream.usage == Usage(
        input_tokens=fresh + read + written,
        output_tokens=output,
        cached_input_tokens=read,
        cache_creation_input_tokens=written,
    )


def test_a_corrupted_crc_is_a_problem_and_the_usage_after_it_is_still_read() -> None:
    messages = fx.stream_messages(**CACHED)
    damaged = bytearray(messages[1])
    damaged[-1] ^= 0xFF  # the message CRC of the first delta
    body = b"".join([messages[0], bytes(damaged), *messages[2:]])
    stream = ConverseStream(converse_stream())
    assert run(stream, [body]) == body
    assert stream.usage == CACHED_USAGE
    assert stream.problems == [MESSAGE_CRC_MISMATCH]


def test_a_corrupted_metadata_event_leaves_no_usage_and_says_so() -> None:
    messages = fx.stream_messages(**CACHED)
    damaged = bytearray(messages[-1])
    damaged[-10] ^= 0x01  # inside the usage JSON
    stream = ConverseStream(converse_stream())
    run(stream, [*messages[:-1], bytes(damaged)])
    assert stream.usage is None
    assert stream.problems == [MESSAGE_CRC_MISMATCH, "no usage"]


def test_a_corrupted_prelude_stops_parsing_but_every_byte_still_passes() -> None:
    messages = fx.stream_messages(**CACHED)
    damaged = bytearray(messages[2])
    damaged[3] ^= 0x01  # the total length
    body = b"".join([*messages[:2], bytes(damaged), *messages[3:]])
    stream = ConverseStream(converse_stream())
    chunks = split_at(body, [10, 100, 300])
    assert [stream.feed(chunk) for chunk in chunks] == chunks
    stream.finish()
    assert stream.usage is None
    assert stream.problems == [PRELUDE_CRC_MISMATCH, "no usage"]


def test_a_stream_cut_before_its_metadata_has_no_usage_and_says_so() -> None:
    messages = fx.stream_messages(**CACHED)
    body = b"".join(messages[:-1]) + messages[-1][:25]
    stream = ConverseStream(converse_stream())
    assert run(stream, [body]) == body
    assert stream.usage is None
    assert stream.problems == [TRUNCATED, "no usage"]


def test_an_exception_event_is_a_problem() -> None:
    messages = fx.stream_messages(**CACHED)
    body = b"".join(messages[:3]) + fx.exception("throttlingException", "Too many requests")
    stream = ConverseStream(converse_stream())
    run(stream, [body])
    assert stream.usage is None
    assert stream.problems == ["error event in stream", "no usage"]


def test_an_event_stream_error_message_is_a_problem() -> None:
    error = encode_message(
        {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "x"}
    )
    stream = ConverseStream(converse_stream())
    run(stream, [error, *fx.stream_messages(**CACHED)])
    assert stream.usage == CACHED_USAGE
    assert stream.problems == ["error event in stream"]


def test_a_malformed_metadata_payload_is_a_problem() -> None:
    bad = [
        fx.event("metadata", {"metrics": {"latencyMs": 10}}),
        encode_message(
            {":event-type": "metadata", ":content-type": "application/json", ":message-type": "event"},
            b'{"usage": {"inputTok',
        ),
        fx.event("metadata", {"usage": {"inputTokens": -1, "outputTokens": 2}}),
    ]
    stream = ConverseStream(converse_stream())
    run(stream, bad)
    assert stream.usage == Usage(output_tokens=2)
    assert stream.problems == [
        "metadata event without usage",
        "malformed JSON in stream",
        "usage.inputTokens is not a non-negative integer",
    ]


def test_a_later_metadata_event_replaces_an_earlier_one() -> None:
    early = fx.event("metadata", {"usage": fx.usage_object(1, 1)})
    stream = ConverseStream(converse_stream())
    run(stream, [early, *fx.stream_messages(**CACHED)])
    assert stream.usage == CACHED_USAGE


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_bytes_never_raise_and_always_pass_on(chunks: list[bytes]) -> None:
    stream = ConverseStream(converse_stream())
    for chunk in chunks:
        assert stream.feed(chunk) is chunk
    assert stream.finish() == b""
    assert stream.usage is None


def test_the_api_object_reads_every_shape() -> None:
    assert API.name == "bedrock"
    assert API.parse_request(fx.request_body(), converse()).request.max_tokens == 512
    assert API.parse_response(fx.response_body(5, 6), converse()).usage == Usage(
        input_tokens=5, output_tokens=6
    )


def test_converse_path_percent_encodes_arns_as_sdks_do() -> None:
    arn = f"arn:aws:bedrock:us-east-1::foundation-model/{SONNET_35}"
    assert fx.converse_path(arn, streaming=True) == (
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2F"
        "anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream"
    )
