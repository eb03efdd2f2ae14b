"""OpenAI (and Azure OpenAI) wire bodies built from numbers, for unit tests and mock upstreams.

Shapes follow OpenAI's public API reference: the `chat.completion` object and its
`chat.completion.chunk` stream (with the `stream_options.include_usage` chunk), the legacy
`text_completion` object and stream, the embeddings `list`, and the Responses API `response`
object with its typed SSE events. Azure OpenAI returns the same bodies; its first chat chunk
may carry only `prompt_filter_results` (see `azure_prompt_filter_chunk`).

Each builder takes the usage a test expects back and returns the exact bytes an upstream
would send; serve JSON bodies as `JSON_CONTENT_TYPE` and streams as `SSE_CONTENT_TYPE`.
"""

from __future__ import annotations

import json
from typing import Any

JSON_CONTENT_TYPE = "application/json"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"

# Multi-byte UTF-8 on purpose: tests cut streams inside characters too.
DEFAULT_PIECES = ("Budgets ", "café ", "日本語 ", "🎉")

_CREATED = 1741569952


def dumps(obj: Any) -> bytes:
    """Compact JSON as OpenAI sends it, UTF-8 kept as is."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sse_data(payload: Any, ending: bytes = b"\n") -> bytes:
    """One `data:` event (chat and completions streams); bytes are sent as they are."""
    body = payload if isinstance(payload, bytes) else dumps(payload)
    return b"data: " + body + ending + ending


def sse_event(name: str, payload: Any, ending: bytes = b"\n") -> bytes:
    """One typed event (`event:` then `data:`), as the Responses API streams them."""
    return b"event: " + name.encode() + ending + b"data: " + dumps(payload) + ending + ending


def wants_usage(request_body: bytes) -> bool:
    """Whether a chat/completions request asked for streamed usage: what a mock upstream checks."""
    try:
        obj = json.loads(request_body)
    except ValueError:
        return False
    options = obj.get("stream_options") if isinstance(obj, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


# --- Chat completions -----------------------------------------------------------------------


def chat_request(
    model: str | None = "gpt-4o",
    *,
    stream: bool = False,
    include_usage: bool | None = None,
    max_tokens: int | None = None,
    messages: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> bytes:
    """A `POST /v1/chat/completions` body; `model=None` leaves it out (Azure deployments)."""
    body: dict[str, Any] = {}
    if model is not None:
        body["model"] = model
    body["messages"] = messages or [
        {"role": "developer", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
    ]
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    body.update(extra)
    return dumps(body)


def chat_usage(
    input_tokens: int, output_tokens: int, *, cached_tokens: int = 0, reasoning_tokens: int = 0
) -> dict[str, Any]:
    """The `usage` object of chat completions: `prompt_tokens` include the cached ones."""
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_response(
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    text: str = "".join(DEFAULT_PIECES),
) -> bytes:
    """A buffered `chat.completion` object."""
    return dumps(
        {
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "object": "chat.completion",
            "created": _CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": chat_usage(
                input_tokens, output_tokens, cached_tokens=cached_tokens, reasoning_tokens=reasoning_tokens
            ),
            "service_tier": "default",
            "system_fingerprint": "fp_fc9f1d7035",
        }
    )


def _chat_chunk(model: str, delta: dict[str, Any], finish: str | None, include_usage: bool) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": model,
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        # With include_usage, every chunk but the last carries `"usage": null`.
        chunk["usage"] = None
    return chunk


def chat_stream_parts(
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    include_usage: bool = True,
    pieces: tuple[str, ...] = DEFAULT_PIECES,
    ending: bytes = b"\n",
) -> tuple[bytes, bytes, bytes]:
    """(content chunks, the usage chunk or b"" without include_usage, `[DONE]`)."""
    deltas = [{"role": "assistant", "content": "", "refusal": None}, *({"content": p} for p in pieces)]
    chunks = [_chat_chunk(model, delta, None, include_usage) for delta in deltas]
    chunks.append(_chat_chunk(model, {}, "stop", include_usage))
    before = b"".join(sse_data(chunk, ending) for chunk in chunks)
    usage_event = b""
    if include_usage:
        usage_chunk = {
            "id": "chatcmpl-123",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": model,
            "system_fingerprint": "fp_44709d6fcb",
            "choices": [],
            "usage": chat_usage(
                input_tokens, output_tokens, cached_tokens=cached_tokens, reasoning_tokens=reasoning_tokens
            ),
        }
        usage_event = sse_data(usage_chunk, ending)
    return before, usage_event, sse_data(b"[DONE]", ending)


def chat_stream(model: str, input_tokens: int, output_tokens: int, **options: Any) -> bytes:
    """A whole chat completions SSE body (see `chat_stream_parts` for the options)."""
    return b"".join(chat_stream_parts(model, input_tokens, output_tokens, **options))


def azure_prompt_filter_chunk(ending: bytes = b"\n") -> bytes:
    """Azure OpenAI's first chat chunk: prompt filter results, no choices, an empty model."""
    severity = {"filtered": False, "severity": "safe"}
    return sse_data(
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": [
                {
                    "prompt_index": 0,
                    "content_filter_results": {
                        "hate": severity,
                        "self_harm": severity,
                        "sexual": severity,
                        "violence": severity,
                    },
                }
            ],
        },
        ending,
    )


# --- Legacy completions ---------------------------------------------------------------------


def completions_request(
    model: str | None = "gpt-3.5-turbo-instruct",
    *,
    prompt: Any = "Say this is a test",
    stream: bool = False,
    include_usage: bool | None = None,
    max_tokens: int | None = 7,
    **extra: Any,
) -> bytes:
    """A `POST /v1/completions` body; `prompt` may be a string, strings or token arrays."""
    body: dict[str, Any] = {}
    if model is not None:
        body["model"] = model
    body["prompt"] = prompt
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body["temperature"] = 0
    if stream:
        body["stream"] = True
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    body.update(extra)
    return dumps(body)


def completions_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def completions_response(
    model: str, input_tokens: int, output_tokens: int, *, text: str = "\n\nThis is indeed a test"
) -> bytes:
    """A buffered `text_completion` object."""
    return dumps(
        {
            "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
            "object": "text_completion",
            "created": _CREATED,
            "model": model,
            "system_fingerprint": "fp_44709d6fcb",
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "length"}],
            "usage": completions_usage(input_tokens, output_tokens),
        }
    )


def completions_stream_parts(
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    include_usage: bool = True,
    pieces: tuple[str, ...] = DEFAULT_PIECES,
    ending: bytes = b"\n",
) -> tuple[bytes, bytes, bytes]:
    """(text chunks, the usage chunk or b"" without include_usage, `[DONE]`).

    The streamed objects share the `text_completion` shape; with include_usage the extra
    last chunk has empty `choices`, like chat's.
    """
    chunks: list[dict[str, Any]] = []
    for index, piece in enumerate(pieces):
        finish = "length" if index == len(pieces) - 1 else None
        chunk: dict[str, Any] = {
            "id": "cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe",
            "object": "text_completion",
            "created": _CREATED,
            "choices": [{"text": piece, "index": 0, "logprobs": None, "finish_reason": finish}],
            "model": model,
            "system_fingerprint": "fp_44709d6fcb",
        }
        if include_usage:
            chunk["usage"] = None
        chunks.append(chunk)
    before = b"".join(sse_data(chunk, ending) for chunk in chunks)
    usage_event = b""
    if include_usage:
        usage_chunk = {
            "id": "cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe",
            "object": "text_completion",
            "created": _CREATED,
            "choices": [],
            "model": model,
            "system_fingerprint": "fp_44709d6fcb",
            "usage": completions_usage(input_tokens, output_tokens),
        }
        usage_event = sse_data(usage_chunk, ending)
    return before, usage_event, sse_data(b"[DONE]", ending)


def completions_stream(model: str, input_tokens: int, output_tokens: int, **options: Any) -> bytes:
    return b"".join(completions_stream_parts(model, input_tokens, output_tokens, **options))


# --- Embeddings -----------------------------------------------------------------------------


def embeddings_request(
    model: str | None = "text-embedding-3-small",
    *,
    input: Any = "The food was delicious and the waiter...",
    **extra: Any,
) -> bytes:
    """A `POST /v1/embeddings` body; `input` may be a string, strings or token arrays."""
    body: dict[str, Any] = {"input": input}
    if model is not None:
        body["model"] = model
    body["encoding_format"] = "float"
    body.update(extra)
    return dumps(body)


def embeddings_response(model: str, input_tokens: int, *, vectors: int = 1) -> bytes:
    """A buffered embeddings `list`: usage is `prompt_tokens` and `total_tokens`, no output."""
    return dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "embedding": [0.0023064255, -0.009327292, -0.0028842222], "index": i}
                for i in range(vectors)
            ],
            "model": model,
            "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens},
        }
    )


# --- Responses API --------------------------------------------------------------------------


def responses_request(
    model: str | None = "gpt-4.1",
    *,
    input: Any = "Tell me a three sentence bedtime story about a unicorn.",
    instructions: str | None = None,
    stream: bool = False,
    max_output_tokens: int | None = None,
    **extra: Any,
) -> bytes:
    """A `POST /v1/responses` body; `input` is a string or a list of input items."""
    body: dict[str, Any] = {}
    if model is not None:
        body["model"] = model
    if instructions is not None:
        body["instructions"] = instructions
    body["input"] = input
    if max_output_tokens is not None:
        body["max_output_tokens"] = max_output_tokens
    if stream:
        body["stream"] = True
    body.update(extra)
    return dumps(body)


def responses_usage(
    input_tokens: int, output_tokens: int, *, cached_tokens: int = 0, reasoning_tokens: int = 0
) -> dict[str, Any]:
    """The Responses API `usage`: `input_tokens` include cached, `output_tokens` reasoning."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


_RESPONSE_ID = "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
_MESSAGE_ID = "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b"
_REASONING_ID = "rs_67ccd2bf0e148190a7ba7ff2a0fe6ed20bb6a6b452d3795b"


def _reasoning_item() -> dict[str, Any]:
    return {"id": _REASONING_ID, "type": "reasoning", "summary": []}


def _message_item(text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status != "in_progress" else []
    return {"type": "message", "id": _MESSAGE_ID, "status": status, "role": "assistant", "content": content}


def response_object(
    model: str,
    usage: dict[str, Any] | None,
    *,
    status: str = "completed",
    text: str = "".join(DEFAULT_PIECES),
    reasoning: bool = False,
    max_output_tokens: int | None = None,
) -> dict[str, Any]:
    """The Responses API `response` object in a given `status` (in_progress, completed,
    incomplete, failed), with a reasoning item first when `reasoning`."""
    output: list[dict[str, Any]] = []
    if status != "in_progress":
        if reasoning:
            output.append(_reasoning_item())
        if status != "failed":
            output.append(_message_item(text, "completed" if status == "completed" else "incomplete"))
    return {
        "id": _RESPONSE_ID,
        "object": "response",
        "created_at": 1741476542,
        "status": status,
        "error": {"code": "server_error", "message": "The model failed to generate a response."}
        if status == "failed"
        else None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": None,
        "max_output_tokens": max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "medium" if reasoning else None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def responses_response(
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    status: str = "completed",
    text: str = "".join(DEFAULT_PIECES),
) -> bytes:
    """A buffered Responses API `response` object."""
    usage = responses_usage(
        input_tokens, output_tokens, cached_tokens=cached_tokens, reasoning_tokens=reasoning_tokens
    )
    return dumps(response_object(model, usage, status=status, text=text, reasoning=reasoning_tokens > 0))


def responses_stream_events(
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    status: str = "completed",
    report_usage: bool = True,
    pieces: tuple[str, ...] = DEFAULT_PIECES,
) -> list[tuple[str, dict[str, Any]]]:
    """The (event type, payload) sequence of a streamed response, ending in
    `response.completed`, `response.incomplete` or `response.failed` per `status`."""
    reasoning = reasoning_tokens > 0
    text = "".join(pieces)
    events: list[tuple[str, dict[str, Any]]] = []

    def add(kind: str, **fields: Any) -> None:
        events.append((kind, {"type": kind, **fields, "sequence_number": len(events)}))

    add("response.created", response=response_object(model, None, status="in_progress"))
    add("response.in_progress", response=response_object(model, None, status="in_progress"))
    index = 0
    if reasoning:
        add("response.output_item.added", output_index=0, item=_reasoning_item())
        add("response.output_item.done", output_index=0, item=_reasoning_item())
        index = 1
    if status != "failed":
        add("response.output_item.added", output_index=index, item=_message_item("", "in_progress"))
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": _MESSAGE_ID, "output_index": index, "content_index": 0}
        add("response.content_part.added", **where, part=part)
        for piece in pieces:
            add("response.output_text.delta", **where, delta=piece, logprobs=[])
        add("response.output_text.done", **where, text=text, logprobs=[])
        add("response.content_part.done", **where, part={**part, "text": text})
        item_status = "completed" if status == "completed" else "incomplete"
        add("response.output_item.done", output_index=index, item=_message_item(text, item_status))
    usage = (
        responses_usage(
            input_tokens, output_tokens, cached_tokens=cached_tokens, reasoning_tokens=reasoning_tokens
        )
        if report_usage
        else None
    )
    add(
        f"response.{status}",
        response=response_object(model, usage, status=status, text=text, reasoning=reasoning),
    )
    return events


def responses_stream(
    model: str, input_tokens: int, output_tokens: int, *, ending: bytes = b"\n", **options: Any
) -> bytes:
    """A whole Responses API SSE body (see `responses_stream_events` for the options)."""
    events = responses_stream_events(model, input_tokens, output_tokens, **options)
    return b"".join(sse_event(kind, payload, ending) for kind, payload in events)


def responses_error_event(sequence_number: int, ending: bytes = b"\n") -> bytes:
    """The stream-level `error` event."""
    payload = {
        "type": "error",
        "code": "ERR_SOMETHING",
        "message": "Something went wrong",
        "param": None,
        "sequence_number": sequence_number,
    }
    return sse_event("error", payload, ending)
