"""Anthropic Messages: requests, buffered responses and SSE streams, counted and priced exactly.

Fixtures (tests/support/fixtures_anthropic.py) follow Anthropic's API reference: `usage`
with `input_tokens` excluding the cache counts reported beside it, and the streaming
events `message_start` ... `message_delta` ... `message_stop`.
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
from extproc.usage.anthropic import API, MessagesStream, estimate_input_tokens, parse_request, parse_response
from extproc.usage.api import Api, ApiCall
from tests.support import fixtures_anthropic as fx

CALL = ApiCall(api="anthropic.messages", provider="anthropic")
MODEL = "claude-sonnet-4-5-20250929"
# 100 uncached input tokens, 2,000 written to the cache, 10,000 read from it, 500 output.
CACHED = {
    "input_tokens": 100,
    "output_tokens": 500,
    "cache_creation_input_tokens": 2000,
    "cache_read_input_tokens": 10000,
}
CACHED_USAGE = Usage(
    input_tokens=12_100, output_tokens=500, cached_input_tokens=10_000, cache_creation_input_tokens=2000
)
# claude-sonnet-4-5 per 1M tokens: input $3, cache write $3.75, cache read $0.30, output $15.
CACHED_COST = Decimal("0.0183")  # (100*3 + 2000*3.75 + 10000*0.30 + 500*15) / 1e6
# A non-ASCII reply, so that stream cuts fall inside UTF-8 characters too.
TEXT = 'Budgets: "admission" first — 日本語 🚦 {not json} \\ then spend.'

CATALOG = Catalog()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def run(stream: UsageStream, chunks: list[bytes]) -> bytes:
    out = b"".join(stream.feed(chunk) for chunk in chunks)
    return out + stream.finish()


def cached_stream(**options: Any) -> bytes:
    return fx.stream_body(MODEL, **CACHED, **{"text": TEXT, **options})


def price(usage: Usage | None, model: str | None = MODEL) -> Decimal:
    assert usage is not None
    return CATALOG.price(usage, model, "anthropic").usd


# --- The Api --------------------------------------------------------------------------------


def test_the_module_offers_an_api_named_anthropic() -> None:
    api: Api = API
    assert api.name == "anthropic"
    assert isinstance(api.stream(CALL, hide_usage_chunk=False), MessagesStream)


# --- Responses ------------------------------------------------------------------------------


def test_cache_reads_and_writes_join_the_input_as_its_subsets() -> None:
    parsed = parse_response(fx.response_body(MODEL, **CACHED), CALL)
    assert parsed.usage == CACHED_USAGE
    assert parsed.usage.total_tokens == 12_600
    assert parsed.model == MODEL
    assert parsed.problem is None


def test_cache_reads_writes_and_output_are_priced_exactly_at_their_own_rates() -> None:
    parsed = parse_response(fx.response_body(MODEL, **CACHED), CALL)
    assert parsed.usage is not None
    cost = CATALOG.price(parsed.usage, parsed.model, "anthropic")
    assert cost.usd == CACHED_COST
    assert dict(cost.components) == {
        "input": Decimal("0.0003"),
        "cached_input": Decimal("0.003"),
        "cache_write": Decimal("0.0075"),
        "output": Decimal("0.0075"),
        "reasoning": Decimal(0),
    }


def test_cache_reads_count_towards_the_long_context_tier() -> None:
    # 5,000 + 200,000 cache reads = 205,000 input tokens: over 200k, every rate is the tier's
    # (input $6, cache read $0.60, output $22.50). Counting only `input_tokens` would miss it.
    body = fx.response_body(MODEL, 5000, 1000, cache_read_input_tokens=200_000)
    usage = parse_response(body, CALL).usage
    assert usage == Usage(input_tokens=205_000, output_tokens=1000, cached_input_tokens=200_000)
    assert price(usage) == Decimal("0.1725")  # (5000*6 + 200000*0.6 + 1000*22.5) / 1e6


def test_null_or_missing_cache_fields_count_as_zero() -> None:
    for usage in (
        {"input_tokens": 25, "output_tokens": 15},
        {
            "input_tokens": 25,
            "output_tokens": 15,
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": None,
        },
    ):
        parsed = parse_response(dumps({"model": MODEL, "usage": usage}), CALL)
        assert parsed.usage == Usage(input_tokens=25, output_tokens=15)
        assert parsed.problem is None


def test_a_response_without_a_model_takes_the_calls() -> None:
    call = ApiCall(api="anthropic.messages", provider="anthropic", model="claude-haiku-4-5")
    parsed = parse_response(dumps({"usage": {"input_tokens": 1, "output_tokens": 2}}), call)
    assert parsed.model == "claude-haiku-4-5"


def test_an_error_body_is_an_error_response_and_no_usage() -> None:
    parsed = parse_response(fx.error_body(), CALL)
    assert (parsed.usage, parsed.problem) == (None, "error response")


def test_a_message_without_usage_says_so_and_keeps_the_model() -> None:
    body = fx.message(MODEL, 1, 1)
    del body["usage"]
    parsed = parse_response(dumps(body), CALL)
    assert (parsed.usage, parsed.model, parsed.problem) == (None, MODEL, "no usage")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "empty body"),
        (b"  \n", "empty body"),
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "body is not a JSON object"),
        (b'{"usage": 3}', "usage is not an object"),
        (b'{"usage": {}}', "usage has no token counts"),
    ],
)
def test_unreadable_responses_give_a_problem_and_no_usage(body: bytes, problem: str) -> None:
    parsed = parse_response(body, CALL)
    assert (parsed.usage, parsed.problem) == (None, problem)


@pytest.mark.parametrize("bad", [-1, 1.5, "12", True])
def test_a_wrongly_typed_count_is_left_out_with_a_problem(bad: Any) -> None:
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": bad}
    parsed = parse_response(dumps({"usage": usage}), CALL)
    assert parsed.usage == Usage(input_tokens=10, output_tokens=5)
    assert parsed.problem == "usage.cache_read_input_tokens is not a non-negative integer"


def test_a_streamed_body_that_arrives_whole_is_read_as_a_stream() -> None:
    parsed = parse_response(cached_stream(), CALL)
    assert (parsed.usage, parsed.model, parsed.problem) == (CACHED_USAGE, MODEL, None)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_KEYS = st.sampled_from(
    [
        "type",
        "model",
        "usage",
        "message",
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "message_start",
        "message_delta",
        "error",
    ]
)
# JSON shaped like a message or an event, with any value in any of the fields we read.
_MESSAGE_LIKE = st.recursive(_JSON, lambda inner: st.dictionaries(_KEYS, inner, max_size=5), max_leaves=30)


def sane(usage: Usage) -> bool:
    counts = (
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.cache_creation_input_tokens,
    )
    return (
        all(isinstance(n, int) and n >= 0 for n in counts)
        and usage.cached_input_tokens + usage.cache_creation_input_tokens <= usage.input_tokens
        and usage.reasoning_tokens == 0
    )


@given(st.binary(max_size=256))
def test_arbitrary_bytes_never_raise_in_response_parsing(body: bytes) -> None:
    parsed = parse_response(body, CALL)
    assert parsed.usage is not None or parsed.problem is not None


@given(_MESSAGE_LIKE)
def test_any_json_response_yields_sane_usage_or_a_problem(obj: Any) -> None:
    parsed = parse_response(dumps(obj), CALL)
    if parsed.usage is None:
        assert parsed.problem is not None
    else:
        assert sane(parsed.usage)


# --- Requests -------------------------------------------------------------------------------


def test_the_request_fields_admission_needs_are_read_and_nothing_is_rewritten() -> None:
    parsed = parse_request(fx.request_body(MODEL, "abcdefgh", max_tokens=2048, stream=True), CALL)
    request = parsed.request
    assert (request.model, request.max_tokens, request.stream) == (MODEL, 2048, True)
    # "user" + "abcdefgh" = 12 bytes = 3 tokens, plus 4 for the one message.
    assert request.estimated_input_tokens == 7
    assert (parsed.rewritten_body, parsed.injected_usage, parsed.problem) == (None, False, None)


def test_a_request_without_stream_is_not_streamed() -> None:
    assert parse_request(fx.request_body(MODEL), CALL).request.stream is False


def test_a_request_without_a_model_takes_the_calls() -> None:
    call = ApiCall(api="anthropic.messages", provider="anthropic", model="claude-opus-4-1")
    assert parse_request(dumps({"max_tokens": 5, "messages": []}), call).request.model == "claude-opus-4-1"
    assert parse_request(b"{oops", call).request.model == "claude-opus-4-1"


def test_the_estimate_counts_the_system_prompt_as_a_string_or_blocks() -> None:
    as_string = parse_request(fx.request_body(MODEL, "", system="x" * 40), CALL).request
    blocks = [{"type": "text", "text": "x" * 32, "cache_control": {"type": "ephemeral"}}]
    as_blocks = parse_request(fx.request_body(MODEL, "", system=blocks), CALL).request
    # 40 bytes + "user" = 44 bytes = 11 tokens + 4; the blocks: 32 + "text" + "ephemeral" + "user".
    assert as_string.estimated_input_tokens == 11 + 4
    assert as_blocks.estimated_input_tokens == -(-(32 + 4 + 9 + 4) // 4) + 4


def test_the_estimate_counts_text_and_tools_but_not_media_or_signatures() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 10_000}}
    document = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "B" * 10_000},
    }
    thinking = {"type": "thinking", "thinking": "", "signature": "C" * 10_000}
    redacted = {"type": "redacted_thinking", "data": "D" * 10_000}
    messages = [
        {"role": "user", "content": [image, document, {"type": "text", "text": "éé"}]},
        {
            "role": "assistant",
            "content": [thinking, redacted, {"type": "tool_use", "id": "", "name": "", "input": {}}],
        },
    ]
    # Strings: "user", "text", "éé" (4 bytes), "assistant", "thinking", "tool_use", and
    # empty ones: 4 + 4 + 4 + 9 + 8 + 8 = 37 bytes = 10 tokens, plus 4 per message.
    assert estimate_input_tokens(None, messages) == 10 + 8


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "empty body"),
        (b"{oops", "malformed JSON"),
        (b'"text"', "body is not a JSON object"),
        (b'{"model": 7, "max_tokens": 10}', "model is not a string"),
        (b'{"model": "m", "max_tokens": "10"}', "max_tokens is not a non-negative integer"),
        (b'{"model": "m", "messages": "hi"}', "messages is not a list"),
    ],
)
def test_unreadable_requests_give_a_problem_and_no_rewrite(body: bytes, problem: str) -> None:
    parsed = parse_request(body, CALL)
    assert (parsed.problem, parsed.rewritten_body) == (problem, None)


_REQUEST_KEYS = st.sampled_from(
    ["model", "max_tokens", "stream", "system", "messages", "content", "type", "text"]
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


def test_a_streamed_call_yields_the_same_usage_model_and_cost_as_a_plain_one() -> None:
    stream = MessagesStream(CALL)
    run(stream, [cached_stream()])
    assert (stream.usage, stream.model, stream.problems) == (CACHED_USAGE, MODEL, [])
    plain = parse_response(fx.response_body(MODEL, **CACHED), CALL)
    assert price(stream.usage, stream.model) == price(plain.usage, plain.model) == CACHED_COST


def test_every_chunk_passes_on_as_the_same_object_even_when_asked_to_hide() -> None:
    body = cached_stream()
    for hide in (False, True):
        stream = API.stream(CALL, hide_usage_chunk=hide)
        for chunk in (body[:7], body[7:300], body[300:]):
            assert stream.feed(chunk) is chunk
        assert stream.finish() == b""
        assert stream.usage == CACHED_USAGE


def test_a_delta_repeating_the_cache_counts_does_not_double_them() -> None:
    # Envoy AI Gateway #2279: message_delta repeats the cumulative input and cache counts;
    # adding them to message_start's counted the cache twice.
    stream = MessagesStream(CALL)
    run(stream, [cached_stream(delta_repeats_input=True)])
    assert stream.usage == CACHED_USAGE
    assert price(stream.usage) == CACHED_COST


def test_a_delta_with_only_output_keeps_the_input_of_message_start() -> None:
    # Envoy AI Gateway #1631/#2352: a streamed call whose input came out as 0.
    stream = MessagesStream(CALL)
    run(stream, [cached_stream()])
    assert stream.usage is not None
    assert stream.usage.input_tokens == 12_100
    assert stream.usage.total_tokens == 12_600


def test_a_delta_that_zeroes_or_nulls_the_input_cannot_erase_it() -> None:
    events = fx.stream_events(MODEL, **CACHED)
    zeroed = {
        "input_tokens": 0,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": 0,
        "output_tokens": 500,
    }
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": zeroed,
    }
    events[-2] = fx.event("message_delta", delta)
    stream = MessagesStream(CALL)
    run(stream, [b"".join(events)])
    assert stream.usage == CACHED_USAGE


def test_input_and_cache_counts_reported_only_in_message_delta_are_read() -> None:
    # Envoy AI Gateway #2290: some compatible backends report the input only at the end.
    events = fx.stream_events(MODEL, 0, 5, start_output_tokens=0)
    late = {"input_tokens": 4522, "cache_creation_input_tokens": 4511, "output_tokens": 5}
    events[-2] = fx.event("message_delta", {"type": "message_delta", "delta": {}, "usage": late})
    stream = MessagesStream(CALL)
    run(stream, [b"".join(events)])
    assert stream.usage == Usage(input_tokens=9033, output_tokens=5, cache_creation_input_tokens=4511)
    assert stream.problems == []


def test_several_deltas_are_cumulative_not_added() -> None:
    events = fx.stream_events(MODEL, 25, 15)
    early = fx.event("message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 10}})
    stream = MessagesStream(CALL)
    run(stream, [b"".join([*events[:-2], early, *events[-2:]])])
    assert stream.usage == Usage(input_tokens=25, output_tokens=15)


def test_a_stream_cut_before_message_delta_keeps_message_starts_usage_and_says_so() -> None:
    events = fx.stream_events(MODEL, **CACHED)
    stream = MessagesStream(CALL)
    run(stream, [b"".join(events[:4])])
    assert stream.usage == Usage(
        input_tokens=12_100, output_tokens=1, cached_input_tokens=10_000, cache_creation_input_tokens=2000
    )
    assert stream.problems == ["no final usage"]


def test_a_stream_without_message_start_usage_says_its_input_is_unknown() -> None:
    events = fx.stream_events(MODEL, 25, 15)
    stream = MessagesStream(CALL)
    run(stream, [b"".join(events[1:])])
    assert stream.usage == Usage(output_tokens=15)
    assert stream.model is None
    assert stream.problems == ["no input usage"]


def test_a_stream_with_no_usage_says_so() -> None:
    stream = MessagesStream(CALL)
    run(stream, [b"".join(fx.stream_events(MODEL, 1, 2)[1:5])])
    assert (stream.usage, stream.problems) == (None, ["no usage"])


def test_an_error_event_mid_stream_is_a_problem() -> None:
    events = fx.stream_events(MODEL, 25, 15)
    error = fx.event("error", json.loads(fx.error_body()))
    stream = MessagesStream(CALL)
    run(stream, [b"".join([*events[:4], error])])
    assert stream.problems == ["error event in stream", "no final usage"]
    assert stream.usage == Usage(input_tokens=25, output_tokens=1)


def test_malformed_json_is_a_problem_and_later_usage_is_still_read() -> None:
    events = fx.stream_events(MODEL, **CACHED)
    bad = b'event: message_delta\ndata: {"type": "message_delta", "us\n\n'
    stream = MessagesStream(CALL)
    run(stream, [b"".join([*events[:-2], bad, *events[-2:]])])
    assert stream.usage == CACHED_USAGE
    assert stream.problems == ["malformed JSON in stream"]


def test_content_events_are_not_parsed() -> None:
    # The bulk of a stream: their JSON is never decoded, so even a broken one is no problem.
    events = fx.stream_events(MODEL, 25, 15)
    broken = b"event: content_block_delta\ndata: {broken\n\n"
    stream = MessagesStream(CALL)
    run(stream, [b"".join([*events[:3], broken, *events[3:]])])
    assert (stream.usage, stream.problems) == (Usage(input_tokens=25, output_tokens=15), [])


def test_events_without_event_lines_are_read_by_their_type() -> None:
    body = b"".join(event.split(b"\n", 1)[1] for event in fx.stream_events(MODEL, **CACHED))
    assert b"event:" not in body
    stream = MessagesStream(CALL)
    run(stream, [body])
    assert (stream.usage, stream.model, stream.problems) == (CACHED_USAGE, MODEL, [])


def test_an_oversized_event_passes_through_and_later_usage_is_still_read() -> None:
    body = cached_stream(text="x" * 5000)
    stream = MessagesStream(CALL, max_event_bytes=1024)
    chunks = [body[i : i + 512] for i in range(0, len(body), 512)]
    assert run(stream, chunks) == body
    assert stream.usage == CACHED_USAGE
    assert stream.problems == ["SSE event over the size cap"]


def test_a_last_event_without_its_blank_line_is_still_read() -> None:
    events = fx.stream_events(MODEL, **CACHED)
    stream = MessagesStream(CALL)
    run(stream, [b"".join(events[:-1]).rstrip(b"\n")])
    assert (stream.usage, stream.problems) == (CACHED_USAGE, [])


LINE_ENDINGS = [b"\n", b"\r\n", b"\r"]


def stream_with(ending: bytes) -> bytes:
    return cached_stream().replace(b"\n", ending)


@pytest.mark.parametrize("ending", LINE_ENDINGS)
def test_every_two_chunk_cut_gives_the_same_result(ending: bytes) -> None:
    """Exhaustive over cut positions: inside every UTF-8 character and every CRLF."""
    body = stream_with(ending)
    assert "日本語".encode() in body
    for cut in range(len(body) + 1):
        stream = MessagesStream(CALL)
        assert run(stream, [body[:cut], body[cut:]]) == body, cut
        assert (stream.usage, stream.model, stream.problems) == (CACHED_USAGE, MODEL, []), cut


def test_byte_by_byte_chunks_give_the_same_result() -> None:
    body = stream_with(b"\r\n")
    stream = MessagesStream(CALL)
    assert run(stream, [body[i : i + 1] for i in range(len(body))]) == body
    assert (stream.usage, stream.model, stream.problems) == (CACHED_USAGE, MODEL, [])


@settings(max_examples=300)
@given(st.sampled_from(LINE_ENDINGS), st.booleans(), st.lists(st.integers(0, 4000), max_size=40))
def test_any_chunking_gives_the_same_usage_model_and_output(
    ending: bytes, repeat: bool, cuts: list[int]
) -> None:
    body = cached_stream(delta_repeats_input=repeat).replace(b"\n", ending)
    stream = MessagesStream(CALL)
    chunks = split_at(body, [cut % (len(body) + 1) for cut in cuts])
    out = [stream.feed(chunk) for chunk in chunks]
    assert all(passed is chunk for passed, chunk in zip(out, chunks, strict=True))
    assert b"".join(out) + stream.finish() == body
    assert (stream.usage, stream.model, stream.problems) == (CACHED_USAGE, MODEL, [])
    assert price(stream.usage, stream.model) == CACHED_COST


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_chunks_never_raise_and_pass_on_unchanged(chunks: list[bytes]) -> None:
    stream = MessagesStream(CALL, max_event_bytes=128)
    assert run(stream, chunks) == b"".join(chunks)


@given(st.lists(_MESSAGE_LIKE, max_size=6))
def test_any_json_events_never_raise_and_give_sane_usage(objects: list[Any]) -> None:
    stream = MessagesStream(CALL)
    run(stream, [b"".join(b"data: " + dumps(obj) + b"\n\n" for obj in objects)])
    if stream.usage is not None:
        assert sane(stream.usage)
