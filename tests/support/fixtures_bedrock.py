"""AWS Bedrock Converse and ConverseStream bodies, built from numbers.

Written from the Bedrock Runtime API reference: `Converse` (request: `messages`, `system`,
`inferenceConfig`; response: `output.message`, `stopReason`, `usage` (TokenUsage),
`metrics.latencyMs`) and `ConverseStream` (the `ConverseStreamOutput` union sent as AWS
event stream messages, `:event-type` naming the member and the JSON payload its fields:
`messageStart`, `contentBlockDelta`, `contentBlockStop`, `messageStop`, then `metadata`
with `usage` and `metrics`). Bedrock's `inputTokens` excludes the cache reads and writes it
reports beside it. Neither response body names the model: the path does (`converse_path`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from extproc.usage.eventstream import encode_message

CONTENT_TYPE = "application/json"
STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"

DEFAULT_TEXT = "Budgets at the gateway keep every team's spend in check."


def converse_path(model_id: str, *, streaming: bool = False) -> str:
    """The request path for a model id, inference profile or ARN (percent-encoded as SDKs do)."""
    operation = "converse-stream" if streaming else "converse"
    return f"/model/{quote(model_id, safe='')}/{operation}"


def request_body(
    prompt: str = "Why budget LLM spend at the gateway?",
    *,
    system: str | None = "You are a concise assistant.",
    max_tokens: int | None = 512,
    cache_point: bool = False,
) -> bytes:
    """A Converse (or ConverseStream: the same body) request."""
    content: list[dict[str, Any]] = [{"text": prompt}]
    if cache_point:
        content.append({"cachePoint": {"type": "default"}})
    obj: dict[str, Any] = {"messages": [{"role": "user", "content": content}]}
    if system is not None:
        obj["system"] = [{"text": system}]
    if max_tokens is not None:
        obj["inferenceConfig"] = {"maxTokens": max_tokens, "temperature": 0.5}
    return _dumps(obj)


def usage_object(
    input_tokens: int, output_tokens: int, cache_read_tokens: int = 0, cache_write_tokens: int = 0
) -> dict[str, int]:
    """TokenUsage: `input_tokens` here is Bedrock's, the input neither read from nor written to the cache."""
    usage = {
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens + cache_read_tokens + cache_write_tokens,
    }
    if cache_read_tokens or cache_write_tokens:
        usage["cacheReadInputTokens"] = cache_read_tokens
        usage["cacheWriteInputTokens"] = cache_write_tokens
    return usage


def response_body(
    input_tokens: int,
    output_tokens: int,
    *,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    text: str = DEFAULT_TEXT,
    latency_ms: int = 1250,
) -> bytes:
    """A Converse response, as served with content-type `CONTENT_TYPE`."""
    obj = {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": usage_object(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens),
        "metrics": {"latencyMs": latency_ms},
    }
    return _dumps(obj)


def error_body(message: str = "Too many requests, please wait before trying again.") -> bytes:
    """An error response body (its type travels in the `x-amzn-ErrorType` header)."""
    return _dumps({"message": message})


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    """One ConverseStream event as an event stream message."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, _dumps(payload))


def exception(exception_type: str = "throttlingException", message: str = "Too many requests") -> bytes:
    """A modelled error mid-stream (`throttlingException`, `modelStreamErrorException`, ...)."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, _dumps({"message": message}))


def stream_messages(
    input_tokens: int,
    output_tokens: int,
    *,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    text: str = DEFAULT_TEXT,
    pieces: int = 4,
    latency_ms: int = 1250,
) -> list[bytes]:
    """A ConverseStream response's messages, in order; the last is `metadata` (the usage)."""
    size = max(1, -(-len(text) // pieces))
    deltas = [text[start : start + size] for start in range(0, len(text), size)] or [""]
    messages = [event("messageStart", {"role": "assistant"})]
    messages += [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": d}}) for d in deltas]
    messages.append(event("contentBlockStop", {"contentBlockIndex": 0}))
    messages.append(event("messageStop", {"stopReason": "end_turn"}))
    usage = usage_object(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)
    messages.append(event("metadata", {"usage": usage, "metrics": {"latencyMs": latency_ms}}))
    return messages


def stream_body(
    input_tokens: int,
    output_tokens: int,
    *,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    text: str = DEFAULT_TEXT,
    pieces: int = 4,
) -> bytes:
    """A whole ConverseStream response, as served with content-type `STREAM_CONTENT_TYPE`."""
    return b"".join(
        stream_messages(
            input_tokens,
            output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
            text=text,
            pieces=pieces,
        )
    )


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
