"""Gemini generateContent: requests, buffered responses and both stream framings, priced exactly.

Fixtures (tests/support/fixtures_gemini.py) follow Google's API reference: `usageMetadata`
whose `promptTokenCount` includes `cachedContentTokenCount` and whose `thoughtsTokenCount`
is apart from `candidatesTokenCount`; streams as `alt=sse` events or one JSON array.
"""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.catalog import Catalog
from extproc.usage import Usage, UsageStream
from extproc.usage.api import Api, ApiCall
from extproc.usage.gemini import (
    API,
    GenerateContentStream,
    JsonValueSplitter,
    estimate_input_tokens,
    parse_request,
    parse_response,
)
from tests.support import fixtures_gemini as fx

FLASH = "gemini-2.5-flash"
PRO = "gemini-2.5-pro"
CALL = ApiCall(api="gemini.generate", provider="google", model=FLASH)
STREAM_CALL = ApiCall(api="gemini.generate", provider="google", model=FLASH, streaming=True)
# A 10,000-token prompt, 8,000 of it from cached content; 300 answer and 1,200 thought tokens.
COUNTS: dict[str, Any] = {"cached_tokens": 8000, "thoughts_tokens": 1200}
THINKING_USAGE = Usage(
    input_tokens=10_000, output_tokens=1500, cached_input_tokens=8000, reasoning_tokens=1200
)
# gemini-2.5-flash per 1M tokens: input $0.30, cached $0.03, output (thoughts too) $2.50.
THINKING_COST = Decimal("0.00459")  # (2000*0.30 + 8000*0.03 + 300*2.5 + 1200*2.5) / 1e6
# A non-ASCII reply with quotes, braces and backslashes, so that cuts fall inside UTF-8
# characters and escapes, and a scanner that ignored strings would lose count of braces.
TEXT = 'Budgets: "admission" first — 日本語 🚦 {not json} \\ [ok], then } spend {.'

CATALOG = Catalog()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def run(stream: UsageStream, chunks: list[bytes]) -> bytes:
    out = b"".join(stream.feed(chunk) for chunk in chunks)
    return out + stream.finish()


def thinking_stream(*, sse: bool, **options: Any) -> bytes:
    return fx.stream_body(FLASH, 10_000, 300, sse=sse, **{"text": TEXT, **COUNTS, **options})


def price(usage: Usage | None, model: str | None = FLASH) -> Decimal:
    assert usage is not None
    return CATALOG.price(usage, model, "google").usd


# --- The Api --------------------------------------------------------------------------------


def test_the_module_offers_an_api_named_gemini() -> None:
    api: Api = API
    assert api.name == "gemini"
    assert isinstance(api.stream(STREAM_CALL, hide_usage_chunk=False), GenerateContentStream)


# --- Responses ------------------------------------------------------------------------------


def test_thoughts_join_the_output_and_cached_content_is_part_of_the_input() -> None:
    parsed = parse_response(fx.response_body(FLASH, 10_000, 300, **COUNTS), CALL)
    assert parsed.usage == THINKING_USAGE
    assert parsed.usage.total_tokens == 11_500
    assert (parsed.model, parsed.problem) == (FLASH, None)


def test_thoughts_price_at_the_output_rate_and_cached_content_at_the_cache_rate() -> None:
    parsed = parse_response(fx.response_body(FLASH, 10_000, 300, **COUNTS), CALL)
    assert parsed.usage is not None
    cost = CATALOG.price(parsed.usage, parsed.model, "google")
    assert cost.usd == THINKING_COST
    assert dict(cost.components) == {
        "input": Decimal("0.0006"),
        "cached_input": Decimal("0.00024"),
        "cache_write": Decimal(0),
        "output": Decimal("0.00075"),
        "reasoning": Decimal("0.003"),
    }


def test_tool_use_prompt_tokens_join_the_input() -> None:
    usage = parse_response(fx.response_body(FLASH, 100, 20, tool_use_prompt_tokens=50), CALL).usage
    assert usage == Usage(input_tokens=150, output_tokens=20)
    assert price(usage) == Decimal("0.000095")  # (150*0.30 + 20*2.5) / 1e6


@pytest.mark.parametrize(
    ("prompt", "cost"),
    [
        # At 200k the base rates apply: input $1.25, output $10.
        (200_000, Decimal("0.28")),  # (200000*1.25 + 3000*10) / 1e6
        # Above it, the whole call prices at the long-context tier: input $2.50, output $15.
        (250_000, Decimal("0.67")),  # (250000*2.5 + 3000*15) / 1e6
    ],
)
def test_a_prompt_over_200k_prices_the_whole_call_at_the_long_context_tier(
    prompt: int, cost: Decimal
) -> None:
    call = ApiCall(api="gemini.generate", provider="google", model=PRO)
    parsed = parse_response(fx.response_body(PRO, prompt, 1000, thoughts_tokens=2000), call)
    assert parsed.usage == Usage(input_tokens=prompt, output_tokens=3000, reasoning_tokens=2000)
    assert price(parsed.usage, parsed.model) == cost


def test_counts_left_out_of_the_wire_are_zero() -> None:
    body = dumps({"usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "modelVersion": FLASH})
    parsed = parse_response(body, CALL)
    assert (parsed.usage, parsed.problem) == (Usage(input_tokens=9), None)


def test_a_response_without_a_model_version_takes_the_paths_model() -> None:
    body = json.loads(fx.response_body(PRO, 10, 5))
    del body["modelVersion"]
    call = ApiCall(api="gemini.generate", provider="google", model=PRO)
    assert parse_response(dumps(body), call).model == PRO


def test_an_error_body_is_an_error_response_and_no_usage() -> None:
    parsed = parse_response(fx.error_body(), CALL)
    assert (parsed.usage, parsed.model, parsed.problem) == (None, FLASH, "error response")


def test_a_response_without_usage_says_so() -> None:
    body = json.loads(fx.response_body(FLASH, 10, 5))
    del body["usageMetadata"]
    assert parse_response(dumps(body), CALL).problem == "no usage"


def test_cached_content_larger_than_the_prompt_is_clamped_with_a_problem() -> None:
    usage = {"promptTokenCount": 10, "cachedContentTokenCount": 50, "candidatesTokenCount": 5}
    parsed = parse_response(dumps({"usageMetadata": usage}), CALL)
    assert parsed.usage == Usage(input_tokens=10, output_tokens=5, cached_input_tokens=10)
    assert parsed.problem == "cachedContentTokenCount exceeds promptTokenCount"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "empty body"),
        (b" \r\n", "empty body"),
        (b"{not json", "malformed JSON"),
        (b'{"usageMetadata": 3}', "usageMetadata is not an object"),
        (b'{"usageMetadata": {"totalTokenCount": 0}}', "usage has no token counts"),
        (
            b'{"usageMetadata": {"promptTokenCount": "12"}}',
            "usageMetadata.promptTokenCount is not a non-negative integer",
        ),
    ],
)
def test_unreadable_responses_give_a_problem_and_no_usage(body: bytes, problem: str) -> None:
    parsed = parse_response(body, CALL)
    assert (parsed.usage, parsed.problem) == (None, problem)


@pytest.mark.parametrize("sse", [True, False])
def test_a_streamed_body_that_arrives_whole_is_read_as_a_stream(sse: bool) -> None:
    parsed = parse_response(thinking_stream(sse=sse), STREAM_CALL)
    assert (parsed.usage, parsed.model, parsed.problem) == (THINKING_USAGE, FLASH, None)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_KEYS = st.sampled_from(
    [
        "usageMetadata",
        "modelVersion",
        "error",
        "candidates",
        "promptTokenCount",
        "cachedContentTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
        "toolUsePromptTokenCount",
        "totalTokenCount",
    ]
)
# JSON shaped like a response, with any value in any of the fields we read.
_RESPONSE_LIKE = st.recursive(_JSON, lambda inner: st.dictionaries(_KEYS, inner, max_size=5), max_leaves=30)


def sane(usage: Usage) -> bool:
    counts = (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.reasoning_tokens)
    return (
        all(isinstance(n, int) and n >= 0 for n in counts)
        and usage.cached_input_tokens <= usage.input_tokens
        and usage.reasoning_tokens <= usage.output_tokens
        and usage.cache_creation_input_tokens == 0
    )


@given(st.binary(max_size=256))
def test_arbitrary_bytes_never_raise_in_response_parsing(body: bytes) -> None:
    parsed = parse_response(body, CALL)
    assert parsed.usage is not None or parsed.problem is not None


@given(_RESPONSE_LIKE)
def test_any_json_response_yields_sane_usage_or_a_problem(obj: Any) -> None:
    parsed = parse_response(dumps(obj), CALL)
    if parsed.usage is None:
        assert parsed.problem is not None
    else:
        assert sane(parsed.usage)


# --- Requests -------------------------------------------------------------------------------


def test_the_request_fields_admission_needs_come_from_the_body_and_the_path() -> None:
    parsed = parse_request(fx.request_body("abcdefgh", max_output_tokens=2048), STREAM_CALL)
    request = parsed.request
    assert (request.model, request.max_tokens, request.stream) == (FLASH, 2048, True)
    # "user" + "abcdefgh" = 12 bytes = 3 tokens, plus 4 for the one content turn.
    assert request.estimated_input_tokens == 7
    assert (parsed.rewritten_body, parsed.injected_usage, parsed.problem) == (None, False, None)


def test_generate_content_is_not_streamed_and_a_missing_limit_is_none() -> None:
    request = parse_request(fx.request_body(max_output_tokens=None), CALL).request
    assert (request.stream, request.max_tokens) == (False, None)


def test_the_system_instruction_counts_in_the_estimate() -> None:
    request = parse_request(fx.request_body("", system="x" * 40), CALL).request
    # 40 bytes of system text + "user" = 44 bytes = 11 tokens, plus 4 for the one turn.
    assert request.estimated_input_tokens == 15


def test_the_snake_case_spellings_are_read_too() -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "abcd"}]}],
        "system_instruction": {"parts": [{"text": "x" * 8}]},
        "generation_config": {"max_output_tokens": 77},
    }
    request = parse_request(dumps(body), CALL).request
    assert (request.max_tokens, request.estimated_input_tokens) == (77, 4 + 4)


def test_the_estimate_skips_inline_and_file_media_and_thought_signatures() -> None:
    contents = [
        {
            "role": "user",
            "parts": [
                {"inlineData": {"mimeType": "image/png", "data": "A" * 10_000}},
                {"inline_data": {"mime_type": "image/png", "data": "B" * 10_000}},
                {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://b/" + "c" * 10_000}},
                {"text": "éé"},
            ],
        },
        {"role": "model", "parts": [{"text": "ok", "thoughtSignature": "D" * 10_000}]},
    ]
    # "user" + "éé" (4 bytes) + "model" + "ok" = 15 bytes = 4 tokens, plus 4 per turn.
    assert estimate_input_tokens(contents) == 4 + 8


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "empty body"),
        (b"{oops", "malformed JSON"),
        (b"[]", "body is not a JSON object"),
        (b'{"generationConfig": 5}', "generationConfig is not an object"),
        (b'{"generationConfig": {"maxOutputTokens": -1}}', "maxOutputTokens is not a non-negative integer"),
        (b'{"contents": "hi"}', "contents is not a list"),
    ],
)
def test_unreadable_requests_give_a_problem_the_paths_model_and_no_rewrite(body: bytes, problem: str) -> None:
    parsed = parse_request(body, STREAM_CALL)
    assert (parsed.problem, parsed.rewritten_body) == (problem, None)
    assert (parsed.request.model, parsed.request.stream) == (FLASH, True)


_REQUEST_KEYS = st.sampled_from(
    ["contents", "parts", "text", "systemInstruction", "generationConfig", "maxOutputTokens", "inlineData"]
)
_REQUEST_LIKE = st.recursive(
    _JSON, lambda inner: st.dictionaries(_REQUEST_KEYS, inner, max_size=5), max_leaves=30
)


@given(st.binary(max_size=256))
def test_arbitrary_bytes_never_raise_in_request_parsing(body: bytes) -> None:
    parsed = parse_request(body, CALL)
    # Without a problem, the body was a JSON object.
    assert parsed.problem is not None or isinstance(json.loads(body), dict)


@given(st.dictionaries(_REQUEST_KEYS, _REQUEST_LIKE, max_size=6))
def test_any_json_request_parses_without_a_rewrite(obj: dict[str, Any]) -> None:
    parsed = parse_request(dumps(obj), CALL)
    assert parsed.rewritten_body is None
    assert parsed.request.estimated_input_tokens >= 0


# --- Streams --------------------------------------------------------------------------------

FRAMINGS = pytest.mark.parametrize("sse", [True, False], ids=["sse", "json-array"])


@FRAMINGS
def test_a_streamed_call_yields_the_same_usage_model_and_cost_as_a_plain_one(sse: bool) -> None:
    stream = GenerateContentStream(STREAM_CALL)
    run(stream, [thinking_stream(sse=sse)])
    assert (stream.usage, stream.model, stream.problems) == (THINKING_USAGE, FLASH, [])
    plain = parse_response(fx.response_body(FLASH, 10_000, 300, **COUNTS), CALL)
    assert price(stream.usage, stream.model) == price(plain.usage, plain.model) == THINKING_COST


@FRAMINGS
def test_every_chunk_passes_on_as_the_same_object_even_when_asked_to_hide(sse: bool) -> None:
    body = thinking_stream(sse=sse)
    for hide in (False, True):
        stream = API.stream(STREAM_CALL, hide_usage_chunk=hide)
        for chunk in (body[:1], body[1:300], body[300:]):
            assert stream.feed(chunk) is chunk
        assert stream.finish() == b""
        assert stream.usage == THINKING_USAGE


@FRAMINGS
def test_cumulative_usage_in_every_chunk_is_taken_not_added(sse: bool) -> None:
    responses = fx.stream_responses(FLASH, 10_000, 300, **COUNTS)
    assert len(responses) == 3 and all("usageMetadata" in item for item in responses)
    stream = GenerateContentStream(STREAM_CALL)
    run(stream, [fx.sse_body(responses) if sse else fx.array_body(responses)])
    # Adding would have counted the prompt three times.
    assert stream.usage == THINKING_USAGE


@FRAMINGS
def test_a_chunk_that_leaves_a_count_out_cannot_erase_it(sse: bool) -> None:
    responses = fx.stream_responses(FLASH, 10_000, 300, **COUNTS)
    responses.append({"usageMetadata": {"promptTokenCount": 10_000, "totalTokenCount": 10_000}})
    stream = GenerateContentStream(STREAM_CALL)
    run(stream, [fx.sse_body(responses) if sse else fx.array_body(responses)])
    assert (stream.usage, stream.problems) == (THINKING_USAGE, [])


def test_a_vertex_stream_without_model_versions_takes_the_paths_model() -> None:
    responses = fx.stream_responses(PRO, 100, 20)
    for item in responses:
        del item["modelVersion"]
    call = ApiCall(api="gemini.generate", provider="google", model=PRO, streaming=True)
    stream = API.stream(call, hide_usage_chunk=False)
    run(stream, [fx.array_body(responses)])
    assert (stream.usage, stream.model) == (Usage(input_tokens=100, output_tokens=20), PRO)


@FRAMINGS
def test_an_error_mid_stream_is_a_problem_and_earlier_usage_stays(sse: bool) -> None:
    responses = [
        *fx.stream_responses(FLASH, 100, 20)[:2],
        json.loads(fx.error_body(500, "Internal", "INTERNAL")),
    ]
    stream = GenerateContentStream(STREAM_CALL)
    run(stream, [fx.sse_body(responses) if sse else fx.array_body(responses)])
    assert stream.problems == ["error event in stream"]
    assert stream.usage == Usage(input_tokens=100, output_tokens=13)


def test_an_error_object_instead_of_an_array_is_a_problem() -> None:
    stream = GenerateContentStream(STREAM_CALL)
    run(stream, [fx.error_body()])
    assert (stream.usage, stream.problems) == (None, ["error event in stream", "no usage"])


def test_a_json_stream_cut_mid_element_keeps_earlier_usage_and_says_so() -> None:
    body = thinking_stream(sse=False)
    stream = GenerateContentStream(STREAM_CALL)
    run(stream, [body[: body.rindex(b'"usageMetadata"')]])
    assert stream.usage == Usage(
        input_tokens=10_000, output_tokens=1400, cached_input_tokens=8000, reasoning_tokens=1200
    )
    assert stream.problems == ["stream cut mid-element"]


@FRAMINGS
def test_a_stream_with_no_usage_says_so(sse: bool) -> None:
    responses = fx.stream_responses(FLASH, 1, 2)
    for item in responses:
        del item["usageMetadata"]
    stream = GenerateContentStream(STREAM_CALL)
    run(stream, [fx.sse_body(responses) if sse else fx.array_body(responses)])
    assert (stream.usage, stream.model, stream.problems) == (None, FLASH, ["no usage"])


def test_an_empty_stream_has_no_usage() -> None:
    stream = GenerateContentStream(STREAM_CALL)
    assert run(stream, [b"", b" \r\n"]) == b" \r\n"
    assert (stream.usage, stream.problems) == (None, ["no usage"])


@FRAMINGS
def test_a_malformed_element_is_a_problem_and_later_usage_is_still_read(sse: bool) -> None:
    body = thinking_stream(sse=sse)
    # SSE: an event that is not JSON; the array: an element that is not (its braces balance).
    body = b'data: {"candidates": [tru\r\n\r\n' + body if sse else b'[{"candidates": [tru]},' + body[1:]
    stream = GenerateContentStream(STREAM_CALL)
    run(stream, [body])
    assert (stream.usage, stream.problems) == (THINKING_USAGE, ["malformed JSON in stream"])


def test_a_non_object_in_the_array_stops_reading_with_a_problem() -> None:
    body = b'[{"usageMetadata": {"promptTokenCount": 5}}, 7, {"usageMetadata": {"promptTokenCount": 9}}]'
    stream = GenerateContentStream(STREAM_CALL)
    assert run(stream, [body]) == body
    assert (stream.usage, stream.problems) == (Usage(input_tokens=5), ["malformed JSON in stream"])


@FRAMINGS
def test_an_oversized_element_is_skipped_and_later_usage_is_still_read(sse: bool) -> None:
    responses = fx.stream_responses(FLASH, 10_000, 300, **COUNTS)
    responses.insert(1, fx.response(FLASH, "x" * 5000, {"promptTokenCount": 99_999_999}))
    body = fx.sse_body(responses) if sse else fx.array_body(responses)
    # The SSE splitter caps only an event's incomplete tail (a whole one in one chunk is
    # read); the array reader caps every element, however the bytes were cut.
    for size in (512,) if sse else (512, len(body)):
        stream = GenerateContentStream(STREAM_CALL, max_element_bytes=1024)
        assert run(stream, [body[i : i + size] for i in range(0, len(body), size)]) == body
        assert stream.usage == THINKING_USAGE, size
        over = "SSE event over the size cap" if sse else "stream element over the size cap"
        assert stream.problems == [over], size


@pytest.mark.parametrize("prefix", [b"\xef\xbb\xbf", b" \r\n", b"\xef\xbb\xbf\n "])
@FRAMINGS
def test_a_bom_and_whitespace_before_the_stream_do_not_change_the_framing(prefix: bytes, sse: bool) -> None:
    body = prefix + thinking_stream(sse=sse)
    for cut in range(len(prefix) + 2):
        stream = GenerateContentStream(STREAM_CALL)
        assert run(stream, [body[:cut], body[cut:]]) == body
        assert (stream.usage, stream.problems) == (THINKING_USAGE, []), cut


def test_cached_content_in_a_stream_is_judged_against_the_prompt_only_at_the_end() -> None:
    # Mid-stream a chunk may lack the prompt count: only the final counts are judged.
    early = {"usageMetadata": {"cachedContentTokenCount": 50}}
    stream = GenerateContentStream(STREAM_CALL)
    run(stream, [fx.array_body([early, {"usageMetadata": {"promptTokenCount": 60}}])])
    assert (stream.usage, stream.problems) == (Usage(input_tokens=60, cached_input_tokens=50), [])
    stream = GenerateContentStream(STREAM_CALL)
    run(stream, [fx.array_body([early, {"usageMetadata": {"promptTokenCount": 40}}])])
    assert stream.usage == Usage(input_tokens=40, cached_input_tokens=40)
    assert stream.problems == ["cachedContentTokenCount exceeds promptTokenCount"]


@FRAMINGS
def test_every_two_chunk_cut_gives_the_same_result(sse: bool) -> None:
    """Exhaustive over cut positions: inside every UTF-8 character, escape and CRLF."""
    body = thinking_stream(sse=sse)
    assert "日本語".encode() in body and b"\\\\" in body
    for cut in range(len(body) + 1):
        stream = GenerateContentStream(STREAM_CALL)
        assert run(stream, [body[:cut], body[cut:]]) == body, cut
        assert (stream.usage, stream.model, stream.problems) == (THINKING_USAGE, FLASH, []), cut


@FRAMINGS
def test_byte_by_byte_chunks_give_the_same_result(sse: bool) -> None:
    body = thinking_stream(sse=sse)
    stream = GenerateContentStream(STREAM_CALL)
    assert run(stream, [body[i : i + 1] for i in range(len(body))]) == body
    assert (stream.usage, stream.model, stream.problems) == (THINKING_USAGE, FLASH, [])


@settings(max_examples=300)
@given(st.booleans(), st.lists(st.integers(0, 8000), max_size=40))
def test_any_chunking_gives_the_same_usage_model_and_output(sse: bool, cuts: list[int]) -> None:
    body = thinking_stream(sse=sse)
    stream = GenerateContentStream(STREAM_CALL)
    chunks = split_at(body, [cut % (len(body) + 1) for cut in cuts])
    out = [stream.feed(chunk) for chunk in chunks]
    assert all(passed is chunk for passed, chunk in zip(out, chunks, strict=True))
    assert b"".join(out) + stream.finish() == body
    assert (stream.usage, stream.model, stream.problems) == (THINKING_USAGE, FLASH, [])
    assert price(stream.usage, stream.model) == THINKING_COST


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_chunks_never_raise_and_pass_on_unchanged(chunks: list[bytes]) -> None:
    stream = GenerateContentStream(STREAM_CALL, max_element_bytes=128)
    assert run(stream, chunks) == b"".join(chunks)


@given(st.lists(_RESPONSE_LIKE, max_size=6), st.booleans())
def test_any_json_elements_never_raise_and_give_sane_usage(objects: list[Any], sse: bool) -> None:
    body = b"".join(b"data: " + dumps(obj) + b"\r\n\r\n" for obj in objects) if sse else dumps(objects)
    stream = GenerateContentStream(STREAM_CALL)
    run(stream, [body])
    if stream.usage is not None:
        assert sane(stream.usage)


# --- The JSON array splitter ----------------------------------------------------------------


def split_values(chunks: list[bytes], max_bytes: int = 1 << 20) -> tuple[list[Any], list[str]]:
    problems: list[str] = []
    splitter = JsonValueSplitter(problems.append, max_bytes)
    values = [value for chunk in chunks for value in splitter.feed(chunk)]
    return values + splitter.flush(), problems


_OBJECTS = st.lists(st.dictionaries(st.text(max_size=6), _JSON, max_size=4), max_size=5)


@settings(max_examples=200)
@given(_OBJECTS, st.lists(st.integers(0, 2000), max_size=20), st.sampled_from([b",", b",\r\n", b"\n,\n"]))
def test_any_array_of_objects_cut_anywhere_reads_back_every_object(
    objects: list[dict[str, Any]], cuts: list[int], separator: bytes
) -> None:
    body = b"[" + separator.join(dumps(obj) for obj in objects) + b"]"
    values, problems = split_values(split_at(body, [cut % (len(body) + 1) for cut in cuts]))
    assert (values, problems) == (objects, [])


@settings(max_examples=300)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=10), st.sampled_from([16, 1 << 20]))
def test_any_bytes_cut_anywhere_read_as_they_do_whole(body: bytes, cuts: list[int], max_bytes: int) -> None:
    chunked = split_values(split_at(body, [cut % (len(body) + 1) for cut in cuts]), max_bytes)
    assert chunked == split_values([body], max_bytes)


def test_an_escaped_quote_or_backslash_at_a_cut_does_not_end_the_string() -> None:
    obj = {"text": 'a \\" } { \\\\', "n": 1}
    body = b"[" + dumps(obj) + b"]"
    for cut in range(len(body) + 1):
        assert split_values([body[:cut], body[cut:]]) == ([obj], []), cut
