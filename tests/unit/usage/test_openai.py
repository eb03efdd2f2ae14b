"""OpenAI's APIs: chat completions, legacy completions, embeddings, the Responses API.

Fixtures follow OpenAI's API reference: the `chat.completion` object, `chat.completion.chunk`
events and the `stream_options.include_usage` chunk (the field report's call: gpt-4o
answered as `gpt-4o-2024-08-06`, 21 prompt and 683 completion tokens); the `text_completion`
object and stream; the embeddings `list`; the Responses API `response` object and its typed
events (built by `tests.support.fixtures_openai`). Azure OpenAI shares the bodies.
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
from extproc.usage import LlmRequest, RequestParse, ResponseParse, Usage, UsageStream
from extproc.usage.api import Api, ApiCall
from extproc.usage.openai import (
    API,
    ResponsesStream,
    StreamAccumulator,
    estimate_input_tokens,
    parse_request,
    parse_response,
)
from tests.support import fixtures_openai as fx


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


# --- Fixtures -------------------------------------------------------------------------------

REPORT_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Budgets at the gateway ...",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 21,
        "completion_tokens": 683,
        "total_tokens": 704,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}

REASONING_RESPONSE: dict[str, Any] = {
    **REPORT_RESPONSE,
    "model": "o3-mini-2025-01-31",
    "usage": {
        "prompt_tokens": 2048,
        "completion_tokens": 1500,
        "total_tokens": 3548,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 1216,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
}

REPORT_USAGE = Usage(input_tokens=21, output_tokens=683)


def chunk_event(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        # With include_usage, every chunk but the last carries `"usage": null`.
        "usage": None,
    }


USAGE_CHUNK: dict[str, Any] = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-2024-08-06",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [],
    "usage": {
        "prompt_tokens": 21,
        "completion_tokens": 683,
        "total_tokens": 704,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
}

# Multi-byte UTF-8 on purpose: chunk cuts must land inside characters too.
CONTENT_CHUNKS = [
    chunk_event({"role": "assistant", "content": "", "refusal": None}),
    chunk_event({"content": "Budgets "}),
    chunk_event({"content": "café "}),
    chunk_event({"content": "日本語 "}),
    chunk_event({"content": "🎉\n"}),
    chunk_event({}, finish_reason="stop"),
]


def event(obj: Any, ending: bytes = b"\n") -> bytes:
    payload = obj if isinstance(obj, bytes) else dumps(obj)
    return b"data: " + payload + ending + ending


def stream_parts(ending: bytes = b"\n") -> tuple[bytes, bytes, bytes]:
    """(everything before the usage event, the usage event, everything after it)."""
    before = b"".join(event(chunk, ending) for chunk in CONTENT_CHUNKS)
    return before, event(USAGE_CHUNK, ending), event(b"[DONE]", ending)


LINE_ENDINGS = [b"\n", b"\r\n", b"\r"]


def run(accumulator: StreamAccumulator, chunks: list[bytes]) -> bytes:
    return b"".join([accumulator.feed(chunk) for chunk in chunks]) + accumulator.finish()


# --- Buffered responses ---------------------------------------------------------------------


def test_the_report_response_yields_its_usage_and_dated_model() -> None:
    parsed = parse_response(dumps(REPORT_RESPONSE))
    assert parsed.usage == REPORT_USAGE
    assert parsed.usage.total_tokens == 704
    assert parsed.model == "gpt-4o-2024-08-06"
    assert parsed.problem is None


def test_cached_and_reasoning_tokens_are_read_as_subsets() -> None:
    parsed = parse_response(dumps(REASONING_RESPONSE))
    assert parsed.usage == Usage(
        input_tokens=2048, output_tokens=1500, cached_input_tokens=1920, reasoning_tokens=1216
    )
    # Cached tokens are part of prompt_tokens: counted once, never added again.
    assert parsed.usage.total_tokens == 3548


def test_missing_or_null_details_count_as_zero() -> None:
    for details in ({}, {"prompt_tokens_details": None, "completion_tokens_details": None}):
        body = dumps({"model": "gpt-4o", "usage": {"prompt_tokens": 5, "completion_tokens": 7, **details}})
        assert parse_response(body) == ResponseParse(
            usage=Usage(input_tokens=5, output_tokens=7), model="gpt-4o"
        )


def test_an_embeddings_style_usage_without_completion_tokens_reads_as_input_only() -> None:
    parsed = parse_response(dumps({"usage": {"prompt_tokens": 8, "total_tokens": 8}}))
    assert parsed.usage == Usage(input_tokens=8)


def test_a_response_without_usage_says_so_and_keeps_the_model() -> None:
    body = {k: v for k, v in REPORT_RESPONSE.items() if k != "usage"}
    parsed = parse_response(dumps(body))
    assert (parsed.usage, parsed.model, parsed.problem) == (None, "gpt-4o-2024-08-06", "no usage")
    assert parse_response(dumps({**body, "usage": None})).problem == "no usage"


def test_an_error_body_is_reported_as_an_error_response() -> None:
    body = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    assert parse_response(dumps(body)) == ResponseParse(problem="error response")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "empty body"),
        (b"  \n", "empty body"),
        (b'{"usage": {"prompt_tokens": 1', "malformed JSON"),
        (b"\xff\xfe\xfd", "malformed JSON"),
        (b"[" * 100_000, "malformed JSON"),
        (b'{"n": 1' + b"1" * 5000 + b"}", "malformed JSON"),
        (b"[1, 2]", "body is not a JSON object"),
        (b"null", "body is not a JSON object"),
        (b'"text"', "body is not a JSON object"),
        (b'{"usage": 21}', "usage is not an object"),
        (b'{"usage": {}}', "usage has no token counts"),
        (b'{"usage": {"total_tokens": 704}}', "usage has no token counts"),
    ],
)
def test_unreadable_responses_give_a_problem_and_no_usage(body: bytes, problem: str) -> None:
    parsed = parse_response(body)
    assert (parsed.usage, parsed.problem) == (None, problem)


@pytest.mark.parametrize("bad", ["21", True, -1, 1.5, [21], {"n": 21}])
def test_a_wrongly_typed_count_is_zero_with_a_problem(bad: Any) -> None:
    parsed = parse_response(dumps({"usage": {"prompt_tokens": bad, "completion_tokens": 683}}))
    assert parsed.usage == Usage(input_tokens=0, output_tokens=683)
    assert parsed.problem == "usage.prompt_tokens is not a non-negative integer"


def test_wrongly_typed_details_are_ignored_with_a_problem() -> None:
    usage = {"prompt_tokens": 21, "completion_tokens": 683, "prompt_tokens_details": "cached"}
    parsed = parse_response(dumps({"usage": usage}))
    assert parsed.usage == REPORT_USAGE
    assert parsed.problem == "usage.prompt_tokens_details is not an object"


def test_subsets_larger_than_their_whole_are_clamped() -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 50},
        "completion_tokens_details": {"reasoning_tokens": 9},
    }
    parsed = parse_response(dumps({"usage": usage}))
    assert parsed.usage == Usage(input_tokens=10, output_tokens=5, cached_input_tokens=10, reasoning_tokens=5)
    assert parsed.problem == "cached_tokens exceed prompt_tokens"


def test_a_non_string_model_is_no_model() -> None:
    assert parse_response(dumps({"model": 4, "usage": {"prompt_tokens": 1}})).model is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_USAGE_KEYS = st.sampled_from(
    [
        "prompt_tokens",
        "completion_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
        "cached_tokens",
        "reasoning_tokens",
        "model",
        "usage",
        "choices",
    ]
)
# JSON shaped like a response, with any value in any of the fields we read.
_RESPONSE_LIKE = st.recursive(
    _JSON, lambda inner: st.dictionaries(_USAGE_KEYS, inner, max_size=5), max_leaves=30
)


@given(st.binary(max_size=256))
def test_arbitrary_bytes_never_raise_in_response_parsing(body: bytes) -> None:
    parsed = parse_response(body)
    assert parsed.usage is not None or parsed.problem is not None


@given(_RESPONSE_LIKE)
def test_any_json_response_yields_sane_usage_or_a_problem(obj: Any) -> None:
    parsed = parse_response(dumps(obj))
    if parsed.usage is None:
        assert parsed.problem is not None
    else:
        usage = parsed.usage
        assert all(isinstance(n, int) and n >= 0 for n in (usage.input_tokens, usage.output_tokens))
        assert usage.cached_input_tokens <= usage.input_tokens
        assert usage.reasoning_tokens <= usage.output_tokens


# --- Requests -------------------------------------------------------------------------------

STREAM_REQUEST: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "developer", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a 500-word essay on budgets."},
    ],
    "max_tokens": 800,
    "temperature": 0.7,
    "stream": True,
    "user": "alice",
}


def test_a_streamed_request_without_stream_options_gets_include_usage() -> None:
    parsed = parse_request(dumps(STREAM_REQUEST))
    assert parsed.injected_usage
    assert parsed.problem is None
    assert parsed.request.stream and not parsed.request.client_wants_usage
    assert parsed.rewritten_body == dumps({**STREAM_REQUEST, "stream_options": {"include_usage": True}})
    rewritten = json.loads(parsed.rewritten_body)
    assert list(rewritten) == [*STREAM_REQUEST, "stream_options"]


def test_injection_keeps_other_stream_options_and_the_field_order() -> None:
    body = {**STREAM_REQUEST, "stream_options": {"include_obfuscation": False}, "n": 1}
    parsed = parse_request(dumps(body))
    rewritten = json.loads(parsed.rewritten_body or b"")
    assert list(rewritten) == list(body)
    assert rewritten["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert {k: v for k, v in rewritten.items() if k != "stream_options"} == {
        k: v for k, v in body.items() if k != "stream_options"
    }


def test_a_client_asking_for_usage_is_left_alone_and_sees_the_usage_chunk() -> None:
    body = dumps({**STREAM_REQUEST, "stream_options": {"include_usage": True}})
    parsed = parse_request(body)
    assert (parsed.rewritten_body, parsed.injected_usage) == (None, False)
    assert parsed.request.client_wants_usage


def test_a_client_saying_include_usage_false_still_gets_it_injected_and_hidden() -> None:
    body = {**STREAM_REQUEST, "stream_options": {"include_usage": False, "include_obfuscation": True}}
    parsed = parse_request(dumps(body))
    assert parsed.injected_usage
    rewritten = json.loads(parsed.rewritten_body or b"")
    assert rewritten["stream_options"] == {"include_usage": True, "include_obfuscation": True}
    assert list(rewritten["stream_options"]) == ["include_usage", "include_obfuscation"]
    assert not parsed.request.client_wants_usage


def test_a_null_stream_options_is_replaced() -> None:
    parsed = parse_request(dumps({**STREAM_REQUEST, "stream_options": None}))
    assert json.loads(parsed.rewritten_body or b"")["stream_options"] == {"include_usage": True}


def test_a_wrongly_typed_stream_options_is_not_rewritten() -> None:
    parsed = parse_request(dumps({**STREAM_REQUEST, "stream_options": "yes"}))
    assert (parsed.rewritten_body, parsed.injected_usage) == (None, False)
    assert parsed.problem == "stream_options is not an object"
    assert parsed.request.stream


def test_a_non_streamed_request_is_untouched() -> None:
    without_stream = {k: v for k, v in STREAM_REQUEST.items() if k != "stream"}
    for body in ({**STREAM_REQUEST, "stream": False}, without_stream):
        parsed = parse_request(dumps(body))
        assert (parsed.rewritten_body, parsed.injected_usage, parsed.problem) == (None, False, None)
        assert not parsed.request.stream


def test_the_request_fields_admission_needs_are_read() -> None:
    request = parse_request(dumps(STREAM_REQUEST)).request
    assert (request.model, request.max_tokens, request.stream) == ("gpt-4o", 800, True)
    assert request.estimated_input_tokens == estimate_input_tokens(STREAM_REQUEST["messages"])


def test_max_completion_tokens_counts_and_the_larger_limit_wins() -> None:
    assert parse_request(dumps({"max_completion_tokens": 300})).request.max_tokens == 300
    assert parse_request(dumps({"max_tokens": 100, "max_completion_tokens": 300})).request.max_tokens == 300
    assert parse_request(dumps({"model": "o3"})).request.max_tokens is None


def test_wrongly_typed_request_fields_are_dropped_with_a_problem() -> None:
    parsed = parse_request(dumps({"model": 5, "max_tokens": "800", "messages": "hi"}))
    assert parsed.request == LlmRequest()
    assert parsed.problem == "model is not a string"


def test_the_estimate_is_a_quarter_of_the_text_bytes_plus_four_per_message() -> None:
    # "user" + "Hello!" = 10 bytes -> 3 tokens, + 4 for the message.
    assert estimate_input_tokens([{"role": "user", "content": "Hello!"}]) == 7
    # "日本" is 6 bytes of UTF-8: bytes, not characters, are what the estimate counts.
    assert estimate_input_tokens([{"role": "user", "content": "日本"}]) == -(-10 // 4) + 4
    assert estimate_input_tokens([]) == 0
    assert estimate_input_tokens(None) == 0


def test_the_estimate_counts_text_parts_and_tool_calls_but_not_media() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}
    text = {"type": "text", "text": "x" * 40}
    tool_call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "y" * 40}}
    messages = [
        {"role": "user", "content": [text, image]},
        {"role": "assistant", "tool_calls": [tool_call]},
    ]
    estimate = estimate_input_tokens(messages)
    assert 20 + 8 <= estimate < 100


def test_the_rewrite_keeps_unicode_as_utf8() -> None:
    body = {**STREAM_REQUEST, "messages": [{"role": "user", "content": "日本語 🎉"}]}
    parsed = parse_request(dumps(body))
    assert "日本語 🎉".encode() in (parsed.rewritten_body or b"")


def test_a_lone_surrogate_survives_the_rewrite_as_an_escape() -> None:
    body = b'{"stream":true,"messages":[{"role":"user","content":"a\\ud800b"}]}'
    parsed = parse_request(body)
    assert parsed.injected_usage
    assert json.loads(parsed.rewritten_body or b"")["messages"][0]["content"] == "a\ud800b"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "empty body"),
        (b'{"model": "gpt-4o", "stream": tru', "malformed JSON"),
        (b"\xc3\x28", "malformed JSON"),
        (b"[" * 100_000, "malformed JSON"),
        (b'["stream", true]', "body is not a JSON object"),
        (b"42", "body is not a JSON object"),
    ],
)
def test_unreadable_requests_give_a_problem_defaults_and_no_rewrite(body: bytes, problem: str) -> None:
    assert parse_request(body) == RequestParse(problem=problem)


def test_a_5_mb_request_is_read_and_rewritten() -> None:
    prose = "Budgets and windows, 日本語. " * 170_000
    body = dumps({**STREAM_REQUEST, "messages": [{"role": "user", "content": prose}]})
    assert len(body) > 5_000_000
    parsed = parse_request(body)
    assert parsed.injected_usage
    assert parsed.request.estimated_input_tokens == -(-(len("user") + len(prose.encode())) // 4) + 4
    assert json.loads(parsed.rewritten_body or b"")["messages"][0]["content"] == prose


@given(st.binary(max_size=256))
def test_arbitrary_bytes_never_raise_in_request_parsing(body: bytes) -> None:
    parsed = parse_request(body)
    # Without a problem, the body was a JSON object.
    assert parsed.problem is not None or isinstance(json.loads(body), dict)


_REQUEST_KEYS = st.sampled_from(
    [
        "model",
        "messages",
        "stream",
        "stream_options",
        "include_usage",
        "max_tokens",
        "max_completion_tokens",
        "content",
        "role",
        "type",
        "text",
    ]
)
_REQUEST_LIKE = st.recursive(
    _JSON, lambda inner: st.dictionaries(_REQUEST_KEYS, inner, max_size=5), max_leaves=30
)


@given(st.dictionaries(_REQUEST_KEYS, _REQUEST_LIKE, max_size=6))
def test_any_json_request_parses_and_a_rewrite_changes_only_include_usage(obj: dict[str, Any]) -> None:
    parsed = parse_request(dumps(obj))
    if parsed.rewritten_body is None:
        assert not parsed.injected_usage
        return
    rewritten = json.loads(parsed.rewritten_body)
    options = obj.get("stream_options") or {}
    assert rewritten == {**obj, "stream_options": {**options, "include_usage": True}}


# --- Streams --------------------------------------------------------------------------------


def test_a_streamed_report_call_yields_usage_and_model() -> None:
    before, usage_event, after = stream_parts()
    accumulator = StreamAccumulator(hide_usage_chunk=False)
    run(accumulator, [before + usage_event + after])
    assert accumulator.usage == REPORT_USAGE
    assert accumulator.model == "gpt-4o-2024-08-06"
    assert accumulator.problems == []


def test_the_usage_chunk_is_hidden_from_a_client_that_did_not_ask() -> None:
    before, usage_event, after = stream_parts()
    accumulator = StreamAccumulator(hide_usage_chunk=True)
    assert run(accumulator, [before + usage_event + after]) == before + after
    assert accumulator.usage == REPORT_USAGE


def test_without_hiding_each_chunk_passes_on_as_the_same_object() -> None:
    before, usage_event, after = stream_parts()
    accumulator = StreamAccumulator(hide_usage_chunk=False)
    for chunk in (before, usage_event[:7], usage_event[7:] + after):
        assert accumulator.feed(chunk) is chunk
    assert accumulator.finish() == b""
    assert accumulator.usage == REPORT_USAGE


def test_hiding_holds_back_an_incomplete_event_until_it_completes() -> None:
    first = event(CONTENT_CHUNKS[1])
    accumulator = StreamAccumulator(hide_usage_chunk=True)
    assert accumulator.feed(first[:10]) == b""
    assert accumulator.feed(first[10:]) == first


def test_the_accumulator_is_a_usage_stream() -> None:
    stream: UsageStream = StreamAccumulator(hide_usage_chunk=True)
    assert stream.usage is None


@pytest.mark.parametrize("ending", LINE_ENDINGS)
@pytest.mark.parametrize("hide", [True, False])
def test_every_two_chunk_cut_gives_the_same_result(ending: bytes, hide: bool) -> None:
    """Exhaustive over cut positions: inside every UTF-8 character and every CRLF."""
    before, usage_event, after = stream_parts(ending)
    stream = before + usage_event + after
    assert "日本語".encode() in stream
    expected = before + after if hide else stream
    for cut in range(len(stream) + 1):
        accumulator = StreamAccumulator(hide_usage_chunk=hide)
        assert run(accumulator, [stream[:cut], stream[cut:]]) == expected, cut
        assert (accumulator.usage, accumulator.model) == (REPORT_USAGE, "gpt-4o-2024-08-06"), cut


@pytest.mark.parametrize("ending", LINE_ENDINGS)
def test_byte_by_byte_chunks_give_the_same_result(ending: bytes) -> None:
    before, usage_event, after = stream_parts(ending)
    stream = before + usage_event + after
    accumulator = StreamAccumulator(hide_usage_chunk=True)
    assert run(accumulator, [stream[i : i + 1] for i in range(len(stream))]) == before + after
    assert accumulator.usage == REPORT_USAGE


@settings(max_examples=300)
@given(st.sampled_from(LINE_ENDINGS), st.booleans(), st.lists(st.integers(0, 4000), max_size=40))
def test_any_chunking_gives_the_same_usage_model_and_output(
    ending: bytes, hide: bool, cuts: list[int]
) -> None:
    before, usage_event, after = stream_parts(ending)
    stream = before + usage_event + after
    accumulator = StreamAccumulator(hide_usage_chunk=hide)
    out = run(accumulator, split_at(stream, [cut % (len(stream) + 1) for cut in cuts]))
    assert out == (before + after if hide else stream)
    assert (accumulator.usage, accumulator.model) == (REPORT_USAGE, "gpt-4o-2024-08-06")
    assert accumulator.problems == []


def test_a_stream_cut_before_its_usage_has_none_and_says_so() -> None:
    before, _, _ = stream_parts()
    accumulator = StreamAccumulator(hide_usage_chunk=True)
    assert run(accumulator, [before]) == before
    assert accumulator.usage is None
    assert accumulator.model == "gpt-4o-2024-08-06"
    assert accumulator.problems == ["no usage"]


def test_a_final_usage_event_without_its_blank_line_is_still_read_and_hidden() -> None:
    before, usage_event, _ = stream_parts()
    accumulator = StreamAccumulator(hide_usage_chunk=True)
    assert run(accumulator, [before + usage_event[:-1]]) == before
    assert accumulator.usage == REPORT_USAGE


def test_usage_on_a_chunk_with_choices_is_read_but_never_hidden() -> None:
    # Some OpenAI-compatible servers put usage on the last content chunk.
    last = {**chunk_event({"content": "!"}, "stop"), "usage": USAGE_CHUNK["usage"]}
    stream = event(CONTENT_CHUNKS[1]) + event(last) + event(b"[DONE]")
    accumulator = StreamAccumulator(hide_usage_chunk=True)
    assert run(accumulator, [stream]) == stream
    assert accumulator.usage == REPORT_USAGE


def test_a_later_usage_report_replaces_an_earlier_one() -> None:
    early = {**USAGE_CHUNK, "usage": {"prompt_tokens": 21, "completion_tokens": 10}}
    stream = event(early) + event(USAGE_CHUNK)
    accumulator = StreamAccumulator(hide_usage_chunk=False)
    run(accumulator, [stream])
    assert accumulator.usage == REPORT_USAGE


def test_malformed_json_is_a_problem_and_plain_text_and_comments_are_not() -> None:
    before, usage_event, after = stream_parts()
    noise = b": keep-alive\n\n" + b"data: hello\n\n" + b'data: {"id": "chatcmpl-1", "obj\n\n'
    stream = before + noise + usage_event + after
    accumulator = StreamAccumulator(hide_usage_chunk=True)
    assert run(accumulator, [stream]) == before + noise + after
    assert accumulator.usage == REPORT_USAGE
    assert accumulator.problems == ["malformed JSON in stream"]


def test_an_error_event_mid_stream_is_a_problem() -> None:
    error = {"error": {"message": "The server had an error", "type": "server_error"}}
    accumulator = StreamAccumulator(hide_usage_chunk=True)
    run(accumulator, [event(CONTENT_CHUNKS[1]) + event(error)])
    assert accumulator.problems == ["error event in stream", "no usage"]


def test_an_oversized_event_passes_through_and_later_usage_is_still_read() -> None:
    before, usage_event, after = stream_parts()
    huge = event({"content": "x" * 5000})
    stream = before + huge + usage_event + after
    accumulator = StreamAccumulator(hide_usage_chunk=True, max_event_bytes=1024)
    out = run(accumulator, [stream[i : i + 512] for i in range(0, len(stream), 512)])
    assert out == before + huge + after
    assert accumulator.usage == REPORT_USAGE
    assert accumulator.problems == ["SSE event over the size cap"]


def test_a_body_that_is_not_sse_passes_through_whole() -> None:
    body = dumps(REPORT_RESPONSE)
    for hide in (True, False):
        accumulator = StreamAccumulator(hide_usage_chunk=hide)
        assert run(accumulator, [body[:100], body[100:]]) == body
        assert accumulator.usage is None


@given(st.lists(st.binary(max_size=64), max_size=20), st.booleans())
def test_arbitrary_chunks_never_raise_and_only_whole_events_are_removed(
    chunks: list[bytes], hide: bool
) -> None:
    accumulator = StreamAccumulator(hide_usage_chunk=hide, max_event_bytes=128)
    out = run(accumulator, chunks)
    if hide:
        assert len(out) <= sum(map(len, chunks))
    else:
        assert out == b"".join(chunks)


@given(st.lists(_RESPONSE_LIKE, max_size=6), st.booleans())
def test_any_json_events_never_raise(objects: list[Any], hide: bool) -> None:
    stream = b"".join(event(obj) for obj in objects)
    accumulator = StreamAccumulator(hide_usage_chunk=hide)
    run(accumulator, [stream])
    if accumulator.usage is not None:
        assert accumulator.usage.cached_input_tokens <= accumulator.usage.input_tokens


# === The Api object: dispatch on call.api ===================================================

CHAT_CALL = ApiCall(api="openai.chat", provider="openai")
COMPLETIONS_CALL = ApiCall(api="openai.completions", provider="openai")
EMBEDDINGS_CALL = ApiCall(api="openai.embeddings", provider="openai")
RESPONSES_CALL = ApiCall(api="openai.responses", provider="openai")
# Azure names the deployment in the path; the registry passes it as the model.
AZURE_CHAT_CALL = ApiCall(api="openai.chat", provider="azure", model="prod-gpt4o")
AZURE_COMPLETIONS_CALL = ApiCall(api="openai.completions", provider="azure", model="instruct-dep")
AZURE_EMBEDDINGS_CALL = ApiCall(api="openai.embeddings", provider="azure", model="embed-dep")
AZURE_RESPONSES_CALL = ApiCall(api="openai.responses", provider="azure")

CATALOG = Catalog()


def drain(stream: UsageStream, chunks: list[bytes]) -> bytes:
    return b"".join([stream.feed(chunk) for chunk in chunks]) + stream.finish()


def cuts_of(data: bytes, cuts: list[int]) -> list[bytes]:
    return split_at(data, [cut % (len(data) + 1) for cut in cuts])


def test_the_api_object_is_named_openai_and_implements_the_protocol() -> None:
    api: Api = API
    assert api.name == "openai"


def test_an_unknown_operation_is_a_problem_and_its_stream_passes_through() -> None:
    call = ApiCall(api="openai.audio", provider="openai", model="whisper-1")
    parsed = API.parse_request(fx.chat_request(stream=True), call)
    assert parsed == RequestParse(request=LlmRequest(model="whisper-1"), problem="unsupported operation")
    assert API.parse_response(fx.chat_response("gpt-4o", 1, 2), call) == ResponseParse(
        problem="unsupported operation"
    )
    stream = API.stream(call, hide_usage_chunk=True)
    chunk = fx.chat_stream("gpt-4o", 1, 2)
    assert stream.feed(chunk) is chunk
    assert stream.finish() == b""
    assert (stream.usage, stream.problems) == (None, ["unsupported operation"])


# --- Chat completions through the Api --------------------------------------------------------


def test_chat_through_the_api_reads_and_rewrites_like_the_module_function() -> None:
    body = fx.chat_request(stream=True, max_tokens=800)
    assert API.parse_request(body, CHAT_CALL) == parse_request(body)
    assert API.parse_request(body, CHAT_CALL).injected_usage


def test_chat_cached_tokens_are_a_subset_priced_at_the_cache_read_rate() -> None:
    body = fx.chat_response("gpt-4o-2024-08-06", 2048, 500, cached_tokens=1920)
    parsed = API.parse_response(body, CHAT_CALL)
    assert parsed.usage == Usage(input_tokens=2048, output_tokens=500, cached_input_tokens=1920)
    assert parsed.model == "gpt-4o-2024-08-06"
    # gpt-4o: 128 uncached at $2.50/M + 1920 cached at $1.25/M + 500 out at $10/M.
    price = CATALOG.price(parsed.usage, parsed.model, "openai")
    assert price.usd == Decimal("0.00772")
    assert price.components["cached_input"] == Decimal("0.0024")


@pytest.mark.parametrize("hide", [True, False])
def test_a_streamed_chat_call_with_cached_tokens_costs_the_same_as_a_buffered_one(hide: bool) -> None:
    before, usage_event, after = fx.chat_stream_parts("gpt-4o-2024-08-06", 2048, 500, cached_tokens=1920)
    stream = API.stream(CHAT_CALL, hide_usage_chunk=hide)
    out = drain(stream, [before + usage_event + after])
    assert out == (before + after if hide else before + usage_event + after)
    assert stream.usage == Usage(input_tokens=2048, output_tokens=500, cached_input_tokens=1920)
    assert CATALOG.price(stream.usage, stream.model, "openai").usd == Decimal("0.00772")


def test_a_chat_limit_covers_every_requested_choice() -> None:
    parsed = API.parse_request(fx.chat_request(max_tokens=100, n=3), CHAT_CALL)
    assert parsed.request.max_tokens == 300
    assert API.parse_request(fx.chat_request(max_tokens=100, n=1), CHAT_CALL).request.max_tokens == 100
    assert API.parse_request(fx.chat_request(n=3), CHAT_CALL).request.max_tokens is None


def test_an_azure_chat_request_without_a_model_takes_the_deployment() -> None:
    parsed = API.parse_request(fx.chat_request(None, stream=True), AZURE_CHAT_CALL)
    assert parsed.request.model == "prod-gpt4o"
    assert parsed.injected_usage
    # A body naming its model (Azure's v1 API) wins over the path.
    assert API.parse_request(fx.chat_request("gpt-4o"), AZURE_CHAT_CALL).request.model == "gpt-4o"
    # Even an unreadable body keeps what the path said.
    assert API.parse_request(b"{", AZURE_CHAT_CALL).request == LlmRequest(model="prod-gpt4o")


def test_an_azure_chat_stream_skips_the_filter_chunk_and_prices_the_real_model() -> None:
    before, usage_event, after = fx.chat_stream_parts("gpt-4o-2024-11-20", 21, 683)
    filter_chunk = fx.azure_prompt_filter_chunk()
    stream = API.stream(AZURE_CHAT_CALL, hide_usage_chunk=True)
    # The filter chunk has empty choices but no usage: it is shown, never hidden.
    assert drain(stream, [filter_chunk + before + usage_event + after]) == filter_chunk + before + after
    assert (stream.usage, stream.model) == (Usage(input_tokens=21, output_tokens=683), "gpt-4o-2024-11-20")
    assert CATALOG.price(stream.usage, stream.model, "azure").usd == Decimal("0.0068825")


def test_an_azure_buffered_chat_response_names_the_model_not_the_deployment() -> None:
    parsed = API.parse_response(fx.chat_response("gpt-4o-2024-11-20", 21, 683), AZURE_CHAT_CALL)
    assert parsed.model == "gpt-4o-2024-11-20"
    assert CATALOG.price(parsed.usage or Usage(), parsed.model, "azure").usd == Decimal("0.0068825")


def test_a_chat_stream_without_include_usage_has_no_usage_and_says_so() -> None:
    body = fx.chat_stream("gpt-4o", 21, 683, include_usage=False)
    assert b'"usage"' not in body
    stream = API.stream(CHAT_CALL, hide_usage_chunk=False)
    assert drain(stream, [body]) == body
    assert (stream.usage, stream.model, stream.problems) == (None, "gpt-4o", ["no usage"])


# --- Legacy completions ---------------------------------------------------------------------


def test_a_completions_response_yields_its_usage_and_exact_cost() -> None:
    parsed = API.parse_response(fx.completions_response("gpt-3.5-turbo-instruct", 5, 7), COMPLETIONS_CALL)
    assert parsed == ResponseParse(
        usage=Usage(input_tokens=5, output_tokens=7), model="gpt-3.5-turbo-instruct"
    )
    # $1.50/M in, $2/M out.
    assert CATALOG.price(parsed.usage or Usage(), parsed.model, "openai").usd == Decimal("0.0000215")


def test_a_completions_request_reads_model_limit_and_prompt_estimate() -> None:
    parsed = API.parse_request(
        fx.completions_request(prompt="Say this is a test", max_tokens=7), COMPLETIONS_CALL
    )
    assert parsed == RequestParse(
        request=LlmRequest(model="gpt-3.5-turbo-instruct", max_tokens=7, estimated_input_tokens=5)
    )


def test_a_completions_request_without_max_tokens_holds_the_api_default_of_16() -> None:
    body = fx.completions_request(max_tokens=None)
    assert API.parse_request(body, COMPLETIONS_CALL).request.max_tokens == 16


@pytest.mark.parametrize(
    ("prompt", "estimate", "prompts"),
    [
        ("x" * 40, 10, 1),
        ("日本", 2, 1),  # 6 bytes of UTF-8
        (["x" * 40, "y" * 40], 20, 2),
        ([1212, 318, 257, 1332], 4, 1),  # one prompt as a token array: counted exactly
        ([[1212, 318], [257, 1332, 13]], 5, 2),
        (["x" * 8, [1, 2, 3]], 5, 2),
        ([], 0, 1),
    ],
)
def test_a_completions_prompt_of_any_form_is_estimated_and_every_prompt_held_for(
    prompt: Any, estimate: int, prompts: int
) -> None:
    request = API.parse_request(
        fx.completions_request(prompt=prompt, max_tokens=10), COMPLETIONS_CALL
    ).request
    assert request.estimated_input_tokens == estimate
    assert request.max_tokens == 10 * prompts


def test_a_completions_suffix_counts_and_n_and_best_of_multiply_the_limit() -> None:
    body = fx.completions_request(prompt="x" * 8, suffix="y" * 8, max_tokens=10, n=2, best_of=5)
    request = API.parse_request(body, COMPLETIONS_CALL).request
    assert (request.estimated_input_tokens, request.max_tokens) == (4, 50)


def test_a_wrongly_typed_completions_prompt_is_a_problem() -> None:
    parsed = API.parse_request(fx.completions_request(prompt={"text": "hi"}), COMPLETIONS_CALL)
    assert parsed.problem == "prompt is not a string or list"
    assert parsed.request.estimated_input_tokens == 0


def test_a_streamed_completions_request_gets_include_usage_injected() -> None:
    body = fx.completions_request(stream=True)
    parsed = API.parse_request(body, COMPLETIONS_CALL)
    assert parsed.injected_usage
    assert parsed.rewritten_body == dumps({**json.loads(body), "stream_options": {"include_usage": True}})
    asked = fx.completions_request(stream=True, include_usage=True)
    assert API.parse_request(asked, COMPLETIONS_CALL).rewritten_body is None
    assert fx.wants_usage(parsed.rewritten_body or b"") and not fx.wants_usage(body)


def test_an_azure_completions_request_takes_the_deployment() -> None:
    parsed = API.parse_request(fx.completions_request(None), AZURE_COMPLETIONS_CALL)
    assert parsed.request.model == "instruct-dep"


COMPLETIONS_USAGE = Usage(input_tokens=5, output_tokens=7)


@pytest.mark.parametrize("ending", LINE_ENDINGS)
def test_a_completions_stream_hides_only_the_injected_usage_chunk(ending: bytes) -> None:
    before, usage_event, after = fx.completions_stream_parts("gpt-3.5-turbo-instruct", 5, 7, ending=ending)
    stream = API.stream(COMPLETIONS_CALL, hide_usage_chunk=True)
    assert drain(stream, [before + usage_event + after]) == before + after
    assert (stream.usage, stream.model, stream.problems) == (COMPLETIONS_USAGE, "gpt-3.5-turbo-instruct", [])


def test_a_completions_stream_without_hiding_passes_every_chunk_on_as_the_same_object() -> None:
    body = fx.completions_stream("gpt-3.5-turbo-instruct", 5, 7)
    stream = API.stream(COMPLETIONS_CALL, hide_usage_chunk=False)
    for chunk in (body[:50], body[50:51], body[51:]):
        assert stream.feed(chunk) is chunk
    assert stream.finish() == b""
    assert stream.usage == COMPLETIONS_USAGE


@settings(max_examples=200)
@given(st.sampled_from(LINE_ENDINGS), st.booleans(), st.lists(st.integers(0, 5000), max_size=40))
def test_any_chunking_of_a_completions_stream_gives_the_same_usage_and_output(
    ending: bytes, hide: bool, cuts: list[int]
) -> None:
    before, usage_event, after = fx.completions_stream_parts("gpt-3.5-turbo-instruct", 5, 7, ending=ending)
    whole = before + usage_event + after
    stream = API.stream(COMPLETIONS_CALL, hide_usage_chunk=hide)
    assert drain(stream, cuts_of(whole, cuts)) == (before + after if hide else whole)
    assert (stream.usage, stream.model, stream.problems) == (COMPLETIONS_USAGE, "gpt-3.5-turbo-instruct", [])


# --- Embeddings -----------------------------------------------------------------------------


def test_an_embeddings_response_is_input_only_with_its_exact_cost() -> None:
    parsed = API.parse_response(fx.embeddings_response("text-embedding-3-small", 8), EMBEDDINGS_CALL)
    assert parsed == ResponseParse(usage=Usage(input_tokens=8), model="text-embedding-3-small")
    assert parsed.usage is not None and parsed.usage.total_tokens == 8
    # $0.02/M.
    assert CATALOG.price(parsed.usage, parsed.model, "openai").usd == Decimal("0.00000016")


@pytest.mark.parametrize(
    ("value", "estimate"),
    [
        ("The food was delicious and the waiter...", 10),
        (["x" * 40, "y" * 4], 11),
        ([1212, 318, 257], 3),
        ([[1212, 318], [257]], 3),
    ],
)
def test_an_embeddings_request_holds_its_input_and_no_output(value: Any, estimate: int) -> None:
    parsed = API.parse_request(fx.embeddings_request(input=value), EMBEDDINGS_CALL)
    assert parsed == RequestParse(
        request=LlmRequest(model="text-embedding-3-small", max_tokens=0, estimated_input_tokens=estimate)
    )


def test_an_embeddings_request_is_never_rewritten_nor_streamed() -> None:
    parsed = API.parse_request(fx.embeddings_request(stream=True), EMBEDDINGS_CALL)
    assert (parsed.rewritten_body, parsed.injected_usage, parsed.request.stream) == (None, False, False)


def test_azure_embeddings_take_the_deployment_and_price_the_response_model() -> None:
    parsed = API.parse_request(fx.embeddings_request(None), AZURE_EMBEDDINGS_CALL)
    assert parsed.request.model == "embed-dep"
    response = API.parse_response(fx.embeddings_response("text-embedding-3-small", 8), AZURE_EMBEDDINGS_CALL)
    assert CATALOG.price(response.usage or Usage(), response.model, "azure").usd == Decimal("0.00000016")


def test_a_wrongly_typed_embeddings_input_is_a_problem() -> None:
    parsed = API.parse_request(fx.embeddings_request(input=42), EMBEDDINGS_CALL)
    assert parsed.problem == "input is not a string or list"


# --- Responses API: requests ----------------------------------------------------------------


def test_a_responses_request_reads_model_limit_stream_and_estimate() -> None:
    body = fx.responses_request(
        "o3", input="x" * 40, instructions="y" * 20, stream=True, max_output_tokens=5000
    )
    parsed = API.parse_request(body, RESPONSES_CALL)
    # 60 bytes -> 15 tokens, + 4 each for the input and the instructions.
    assert parsed == RequestParse(
        request=LlmRequest(model="o3", max_tokens=5000, stream=True, estimated_input_tokens=23)
    )


def test_a_streamed_responses_request_is_never_rewritten() -> None:
    parsed = API.parse_request(fx.responses_request(stream=True), RESPONSES_CALL)
    assert (parsed.rewritten_body, parsed.injected_usage) == (None, False)
    assert parsed.request.stream and parsed.request.max_tokens is None


def test_responses_input_items_count_text_but_not_images_or_files() -> None:
    items = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "x" * 40},
                {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 100_000},
                {
                    "type": "input_file",
                    "filename": "a.pdf",
                    "file_data": "data:application/pdf;base64," + "B" * 9999,
                },
            ],
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "z" * 40},
    ]
    estimate = API.parse_request(
        fx.responses_request(input=items), RESPONSES_CALL
    ).request.estimated_input_tokens
    assert 20 + 8 <= estimate < 100


def test_wrongly_typed_responses_fields_are_problems() -> None:
    parsed = API.parse_request(fx.responses_request(input=5, max_output_tokens="9"), RESPONSES_CALL)
    assert parsed.problem == "max_output_tokens is not a non-negative integer"
    assert parsed.request.max_tokens is None
    assert API.parse_request(fx.responses_request(instructions=[1]), RESPONSES_CALL).problem == (
        "instructions is not a string"
    )


def test_an_azure_responses_request_reads_its_model_from_the_body() -> None:
    parsed = API.parse_request(fx.responses_request("gpt-4.1"), AZURE_RESPONSES_CALL)
    assert parsed.request.model == "gpt-4.1"
    assert API.parse_request(fx.responses_request(None), AZURE_RESPONSES_CALL).request.model is None


# --- Responses API: buffered responses ------------------------------------------------------

O4_MINI_USAGE = Usage(input_tokens=1200, output_tokens=2000, cached_input_tokens=1024, reasoning_tokens=1600)


def test_a_responses_response_maps_cached_and_reasoning_tokens_and_prices_exactly() -> None:
    body = fx.responses_response("o4-mini-2025-04-16", 1200, 2000, cached_tokens=1024, reasoning_tokens=1600)
    parsed = API.parse_response(body, RESPONSES_CALL)
    assert parsed == ResponseParse(usage=O4_MINI_USAGE, model="o4-mini-2025-04-16")
    assert parsed.usage is not None and parsed.usage.total_tokens == 3200
    # o4-mini: 176 uncached at $1.10/M, 1024 cached at $0.275/M, 2000 out (reasoning
    # included, priced as output) at $4.40/M.
    price = CATALOG.price(parsed.usage, parsed.model, "openai")
    assert price.usd == Decimal("0.0092752")
    assert price.components["reasoning"] == Decimal("0.00704")


def test_an_o3_responses_call_with_reasoning_costs_exactly() -> None:
    parsed = API.parse_response(
        fx.responses_response("o3-2025-04-16", 75, 1186, reasoning_tokens=1024), RESPONSES_CALL
    )
    assert parsed.usage == Usage(input_tokens=75, output_tokens=1186, reasoning_tokens=1024)
    assert CATALOG.price(parsed.usage or Usage(), parsed.model, "openai").usd == Decimal("0.009638")


@pytest.mark.parametrize("status", ["incomplete", "failed"])
def test_an_incomplete_or_failed_response_still_counts_its_usage(status: str) -> None:
    parsed = API.parse_response(fx.responses_response("gpt-4.1", 36, 16, status=status), RESPONSES_CALL)
    assert parsed == ResponseParse(usage=Usage(input_tokens=36, output_tokens=16), model="gpt-4.1")


def test_a_responses_error_body_without_usage_is_an_error_response() -> None:
    failed = fx.response_object("gpt-4.1", None, status="failed")
    assert API.parse_response(dumps(failed), RESPONSES_CALL) == ResponseParse(
        model="gpt-4.1", problem="error response"
    )
    completed = fx.response_object("gpt-4.1", None)
    assert API.parse_response(dumps(completed), RESPONSES_CALL).problem == "no usage"


def test_responses_usage_problems_name_the_responses_fields() -> None:
    usage = {"input_tokens": 10, "output_tokens": 5, "input_tokens_details": {"cached_tokens": 50}}
    parsed = API.parse_response(dumps({"usage": usage}), RESPONSES_CALL)
    assert parsed.usage == Usage(input_tokens=10, output_tokens=5, cached_input_tokens=10)
    assert parsed.problem == "cached_tokens exceed input_tokens"
    bad = API.parse_response(dumps({"usage": {"input_tokens": "10", "output_tokens": 5}}), RESPONSES_CALL)
    assert (bad.usage, bad.problem) == (
        Usage(output_tokens=5),
        "usage.input_tokens is not a non-negative integer",
    )


def test_a_compatible_server_answering_responses_with_chat_usage_is_still_read() -> None:
    body = dumps({"model": "x", "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
    assert API.parse_response(body, RESPONSES_CALL).usage == Usage(input_tokens=9, output_tokens=3)


def test_an_azure_responses_response_prices_under_azure() -> None:
    parsed = API.parse_response(fx.responses_response("gpt-4o-2024-11-20", 21, 683), AZURE_RESPONSES_CALL)
    assert CATALOG.price(parsed.usage or Usage(), parsed.model, "azure").usd == Decimal("0.0068825")


@given(_RESPONSE_LIKE)
def test_any_json_responses_body_yields_sane_usage_or_a_problem(obj: Any) -> None:
    parsed = API.parse_response(dumps(obj), RESPONSES_CALL)
    if parsed.usage is None:
        assert parsed.problem is not None
    else:
        assert parsed.usage.cached_input_tokens <= parsed.usage.input_tokens
        assert parsed.usage.reasoning_tokens <= parsed.usage.output_tokens


# --- Responses API: streams -----------------------------------------------------------------


def o4_mini_stream(ending: bytes = b"\n", **options: Any) -> bytes:
    return fx.responses_stream(
        "o4-mini-2025-04-16", 1200, 2000, cached_tokens=1024, reasoning_tokens=1600, ending=ending, **options
    )


@pytest.mark.parametrize("hide", [True, False])
def test_a_responses_stream_reads_usage_from_response_completed_and_hides_nothing(hide: bool) -> None:
    body = o4_mini_stream()
    assert b"event: response.completed\n" in body and b"[DONE]" not in body
    stream = API.stream(RESPONSES_CALL, hide_usage_chunk=hide)
    chunks = [body[:300], body[300:301], body[301:]]
    for chunk in chunks:
        assert stream.feed(chunk) is chunk
    assert stream.finish() == b""
    assert (stream.usage, stream.model, stream.problems) == (O4_MINI_USAGE, "o4-mini-2025-04-16", [])
    assert CATALOG.price(stream.usage, stream.model, "openai").usd == Decimal("0.0092752")


@pytest.mark.parametrize("status", ["incomplete", "failed"])
def test_a_responses_stream_ending_incomplete_or_failed_still_counts(status: str) -> None:
    body = fx.responses_stream("gpt-4.1", 36, 16, status=status)
    assert f"event: response.{status}\n".encode() in body
    stream = API.stream(RESPONSES_CALL, hide_usage_chunk=False)
    drain(stream, [body])
    assert (stream.usage, stream.model) == (Usage(input_tokens=36, output_tokens=16), "gpt-4.1")
    assert stream.problems == ([] if status == "incomplete" else ["error event in stream"])


def test_a_responses_stream_cut_before_its_end_knows_the_model_but_has_no_usage() -> None:
    body = o4_mini_stream()
    cut = body.index(b"event: response.completed")
    stream = API.stream(RESPONSES_CALL, hide_usage_chunk=False)
    drain(stream, [body[:cut]])
    assert (stream.usage, stream.model, stream.problems) == (None, "o4-mini-2025-04-16", ["no usage"])


def test_a_failed_responses_stream_without_usage_says_so() -> None:
    body = fx.responses_stream("gpt-4.1", 0, 0, status="failed", report_usage=False)
    stream = API.stream(RESPONSES_CALL, hide_usage_chunk=False)
    drain(stream, [body])
    assert (stream.usage, stream.problems) == (None, ["error event in stream", "no usage"])


def test_an_error_event_in_a_responses_stream_is_a_problem() -> None:
    events = fx.responses_stream_events("gpt-4.1", 1, 1)
    body = fx.sse_event(*events[0]) + fx.responses_error_event(1)
    stream = API.stream(RESPONSES_CALL, hide_usage_chunk=False)
    drain(stream, [body])
    assert stream.problems == ["error event in stream", "no usage"]


def test_a_responses_stream_with_data_only_events_is_read_by_the_payload_type() -> None:
    # Some servers omit the `event:` line; the payload's `type` says the same.
    events = fx.responses_stream_events("o3", 75, 1186, reasoning_tokens=1024)
    body = b"".join(fx.sse_data(payload) for _, payload in events)
    stream = ResponsesStream()
    drain(stream, [body])
    assert stream.usage == Usage(input_tokens=75, output_tokens=1186, reasoning_tokens=1024)


def test_malformed_json_in_a_responses_stream_is_a_problem_and_later_usage_is_read() -> None:
    body = b'event: response.output_text.delta\ndata: {"type": "resp\n\n' + o4_mini_stream()
    stream = ResponsesStream()
    drain(stream, [body])
    assert stream.usage == O4_MINI_USAGE
    assert stream.problems == ["malformed JSON in stream"]


def test_an_oversized_response_completed_event_still_yields_its_usage() -> None:
    # An image generation call's base64 result makes `response.completed` too large to parse.
    image = {"id": "ig_1", "type": "image_generation_call", "status": "completed", "result": "iVBOR" * 4000}
    usage = fx.responses_usage(1200, 2000, cached_tokens=1024, reasoning_tokens=1600)
    completed = fx.response_object("gpt-4.1", usage)
    completed["output"] = [image, *completed["output"]]
    completed["metadata"] = {"usage": "not this one"}
    events = fx.responses_stream_events("gpt-4.1", 1200, 2000)[:-1]
    body = b"".join(fx.sse_event(kind, payload) for kind, payload in events)
    body += fx.sse_event("response.completed", {"type": "response.completed", "response": completed})
    stream = ResponsesStream(max_event_bytes=4096)
    out = drain(stream, [body[i : i + 1000] for i in range(0, len(body), 1000)])
    assert out == body
    assert (stream.usage, stream.model) == (O4_MINI_USAGE, "gpt-4.1")
    assert stream.problems == ["SSE event over the size cap"]


def test_an_oversized_event_without_usage_leaves_none() -> None:
    events = fx.responses_stream_events("gpt-4.1", 1, 1)[:2]
    body = b"".join(fx.sse_event(kind, payload) for kind, payload in events)
    body += fx.sse_event(
        "response.output_text.delta", {"type": "response.output_text.delta", "delta": "x" * 9000}
    )
    stream = ResponsesStream(max_event_bytes=4096)
    drain(stream, [body[i : i + 1000] for i in range(0, len(body), 1000)])
    assert stream.usage is None
    assert stream.problems == ["SSE event over the size cap", "no usage"]


@settings(max_examples=200)
@given(
    st.sampled_from(LINE_ENDINGS),
    st.sampled_from(["completed", "incomplete"]),
    st.lists(st.integers(0, 20_000), max_size=40),
)
def test_any_chunking_of_a_responses_stream_gives_the_same_usage_and_bytes(
    ending: bytes, status: str, cuts: list[int]
) -> None:
    body = o4_mini_stream(ending, status=status)
    stream = API.stream(RESPONSES_CALL, hide_usage_chunk=False)
    chunks = cuts_of(body, cuts)
    out = b"".join([stream.feed(chunk) for chunk in chunks]) + stream.finish()
    assert out == body
    assert (stream.usage, stream.model, stream.problems) == (O4_MINI_USAGE, "o4-mini-2025-04-16", [])


@settings(max_examples=100)
@given(st.lists(st.integers(0, 60_000), max_size=30))
def test_any_chunking_of_an_oversized_completed_event_still_yields_its_usage(cuts: list[int]) -> None:
    usage = fx.responses_usage(1200, 2000, cached_tokens=1024, reasoning_tokens=1600)
    completed = fx.response_object("gpt-4.1", usage, text="日本語 " * 5000)
    body = fx.sse_event("response.completed", {"type": "response.completed", "response": completed})
    stream = ResponsesStream(max_event_bytes=2048)
    assert drain(stream, cuts_of(body, cuts)) == body
    assert stream.usage == O4_MINI_USAGE


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_chunks_never_raise_in_a_responses_stream(chunks: list[bytes]) -> None:
    stream = ResponsesStream(max_event_bytes=128)
    assert drain(stream, chunks) == b"".join(chunks)


@given(st.lists(_RESPONSE_LIKE, max_size=6))
def test_any_json_events_never_raise_in_a_responses_stream(objects: list[Any]) -> None:
    body = b"".join(fx.sse_data({"type": "response.completed", "response": obj}) for obj in objects)
    stream = ResponsesStream()
    drain(stream, [body])
    if stream.usage is not None:
        assert stream.usage.cached_input_tokens <= stream.usage.input_tokens


def test_an_unhashable_content_part_type_is_read_not_raised() -> None:
    from extproc.usage.api import ApiCall
    from extproc.usage.openai import API

    parsed = API.parse_request(
        b'{"model":"gpt-4o","messages":[{"type":[],"content":"hello"}]}', ApiCall("openai.chat", "openai")
    )
    assert parsed.request.model == "gpt-4o"
    assert parsed.request.estimated_input_tokens > 0
