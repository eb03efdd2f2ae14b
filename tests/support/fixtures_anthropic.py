"""Anthropic Messages bodies built from numbers, in the wire format of Anthropic's API reference.

Written from the public reference for `POST /v1/messages` (the `Message` object and its
`usage`) and the streaming guide (`message_start`, `content_block_*`, `ping`,
`message_delta`, `message_stop`, `error` events), not captured from the network. Used by
the unit tests and by the end-to-end tests' mock upstream.
"""

from __future__ import annotations

import json
from typing import Any

PATH = "/v1/messages"
CONTENT_TYPE = "application/json"
STREAM_CONTENT_TYPE = "text/event-stream; charset=utf-8"

DEFAULT_TEXT = "Budgets at the gateway: admission first, spend recorded once usage is known."


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def request_body(
    model: str = "claude-sonnet-4-5",
    prompt: str = "Explain rolling-window budgets in one paragraph.",
    *,
    max_tokens: int = 1024,
    stream: bool = False,
    system: str | list[dict[str, Any]] | None = None,
) -> bytes:
    """A Messages request with one user turn."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    if system is not None:
        body["system"] = system
    if stream:
        body["stream"] = True
    return dumps(body)


def usage_object(
    input_tokens: int,
    output_tokens: int,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
) -> dict[str, Any]:
    """A `usage` object as the API reports it: `input_tokens` excludes the cache counts."""
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_creation_input_tokens,
        "cache_read_input_tokens": cache_read_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache_creation_input_tokens,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def message(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    *,
    text: str = DEFAULT_TEXT,
) -> dict[str, Any]:
    """A whole `Message` object (a non-streamed response)."""
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage_object(
            input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens
        ),
    }


def response_body(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    *,
    text: str = DEFAULT_TEXT,
) -> bytes:
    """A non-streamed response body (content type `CONTENT_TYPE`)."""
    return dumps(
        message(
            model,
            input_tokens,
            output_tokens,
            cache_creation_input_tokens,
            cache_read_input_tokens,
            text=text,
        )
    )


def error_body(error_type: str = "overloaded_error", message_text: str = "Overloaded") -> bytes:
    """An error response body (also the `data` of a streamed `error` event)."""
    return dumps({"type": "error", "error": {"type": error_type, "message": message_text}})


def event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event as Anthropic frames it: `event:` and `data:` lines, a blank line."""
    return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def stream_events(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    *,
    text: str = DEFAULT_TEXT,
    delta_repeats_input: bool = False,
    start_output_tokens: int = 1,
) -> list[bytes]:
    """A streamed response, event by event.

    `message_start` carries the input and cache counts and a first output count;
    `message_delta` the final cumulative output count, and with `delta_repeats_input` the
    input and cache counts again, as newer API versions send them.
    """
    start = message(
        model, input_tokens, start_output_tokens, cache_creation_input_tokens, cache_read_input_tokens
    )
    start["content"] = []
    start["stop_reason"] = None
    final_usage: dict[str, Any] = {"output_tokens": output_tokens}
    if delta_repeats_input:
        final_usage = {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": cache_creation_input_tokens,
            "cache_read_input_tokens": cache_read_input_tokens,
            "output_tokens": output_tokens,
        }
    half = len(text) // 2
    return [
        event("message_start", {"type": "message_start", "message": start}),
        event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        event("ping", {"type": "ping"}),
        *(
            event(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            )
            for piece in (text[:half], text[half:])
        ),
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": final_usage,
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]


def stream_body(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    *,
    text: str = DEFAULT_TEXT,
    delta_repeats_input: bool = False,
) -> bytes:
    """A streamed response body (content type `STREAM_CONTENT_TYPE`)."""
    return b"".join(
        stream_events(
            model,
            input_tokens,
            output_tokens,
            cache_creation_input_tokens,
            cache_read_input_tokens,
            text=text,
            delta_repeats_input=delta_repeats_input,
        )
    )
