"""Gemini generateContent bodies built from numbers, in the wire format of Google's API reference.

Written from the public Gemini API reference (`models.generateContent`,
`models.streamGenerateContent`, the `GenerateContentResponse` and `UsageMetadata` objects)
and Vertex AI's `publishers.models` reference, not captured from the network. Zero counts
are left out, as proto3 JSON does. A stream comes as SSE with `?alt=sse` (each event's
`data` a whole response) and otherwise as one JSON array sent in pieces. Used by the unit
tests and by the end-to-end tests' mock upstream.
"""

from __future__ import annotations

import json
from typing import Any

CONTENT_TYPE = "application/json; charset=UTF-8"
SSE_CONTENT_TYPE = "text/event-stream"
# Without `alt=sse` the stream is a JSON array, served as JSON.
ARRAY_STREAM_CONTENT_TYPE = CONTENT_TYPE

DEFAULT_TEXT = "Budgets at the gateway: admission first, spend recorded once usage is known."


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def path(model: str, *, stream: bool = False, sse: bool = True, vertex: bool = False) -> str:
    """The request path: the Gemini Developer API's, or Vertex AI's with `vertex`."""
    method = "streamGenerateContent" if stream else "generateContent"
    prefix = (
        "/v1/projects/my-project/locations/us-central1/publishers/google/models"
        if vertex
        else "/v1beta/models"
    )
    query = "?alt=sse" if stream and sse else ""
    return f"{prefix}/{model}:{method}{query}"


def request_body(
    prompt: str = "Explain rolling-window budgets in one paragraph.",
    *,
    max_output_tokens: int | None = 1024,
    system: str | None = None,
) -> bytes:
    """A generateContent request with one user turn; the model is in the path."""
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    if system is not None:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if max_output_tokens is not None:
        body["generationConfig"] = {"maxOutputTokens": max_output_tokens}
    return dumps(body)


def usage_metadata(
    prompt_tokens: int,
    candidates_tokens: int,
    *,
    cached_tokens: int = 0,
    thoughts_tokens: int = 0,
    tool_use_prompt_tokens: int = 0,
) -> dict[str, Any]:
    """A `usageMetadata` object: the prompt count includes cached content; thoughts are apart."""
    counts = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": candidates_tokens,
        "totalTokenCount": prompt_tokens + candidates_tokens + thoughts_tokens + tool_use_prompt_tokens,
        "cachedContentTokenCount": cached_tokens,
        "toolUsePromptTokenCount": tool_use_prompt_tokens,
        "thoughtsTokenCount": thoughts_tokens,
    }
    usage: dict[str, Any] = {key: value for key, value in counts.items() if value}
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt_tokens}]
    if cached_tokens:
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached_tokens}]
    return usage


def response(
    model: str,
    text: str,
    usage: dict[str, Any],
    *,
    finished: bool = True,
) -> dict[str, Any]:
    """A `GenerateContentResponse`: one candidate, its usage, the serving model's version."""
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finished:
        candidate["finishReason"] = "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": "mAitaPLbHPzQ7M8PxbnP2Ao",
    }


def response_body(
    model: str,
    prompt_tokens: int,
    candidates_tokens: int,
    *,
    cached_tokens: int = 0,
    thoughts_tokens: int = 0,
    tool_use_prompt_tokens: int = 0,
    text: str = DEFAULT_TEXT,
) -> bytes:
    """A non-streamed response body (content type `CONTENT_TYPE`)."""
    usage = usage_metadata(
        prompt_tokens,
        candidates_tokens,
        cached_tokens=cached_tokens,
        thoughts_tokens=thoughts_tokens,
        tool_use_prompt_tokens=tool_use_prompt_tokens,
    )
    return dumps(response(model, text, usage))


def error_body(
    code: int = 429, message: str = "Resource has been exhausted.", status: str = "RESOURCE_EXHAUSTED"
) -> bytes:
    """A Google API error body (also what a stream carries when it fails part-way)."""
    return dumps({"error": {"code": code, "message": message, "status": status}})


def stream_responses(
    model: str,
    prompt_tokens: int,
    candidates_tokens: int,
    *,
    cached_tokens: int = 0,
    thoughts_tokens: int = 0,
    tool_use_prompt_tokens: int = 0,
    text: str = DEFAULT_TEXT,
    pieces: int = 3,
) -> list[dict[str, Any]]:
    """The responses a stream sends: each with the usage so far (cumulative), the last complete."""
    size = -(-len(text) // pieces)
    chunks: list[dict[str, Any]] = []
    for index in range(pieces):
        last = index == pieces - 1
        usage = usage_metadata(
            prompt_tokens,
            candidates_tokens if last else candidates_tokens * (index + 1) // pieces,
            cached_tokens=cached_tokens,
            thoughts_tokens=thoughts_tokens,
            tool_use_prompt_tokens=tool_use_prompt_tokens,
        )
        chunks.append(response(model, text[index * size : (index + 1) * size], usage, finished=last))
    return chunks


def sse_body(responses: list[dict[str, Any]]) -> bytes:
    """Responses framed as `alt=sse` sends them: one `data:` event each, CRLF line endings."""
    return b"".join(b"data: " + dumps(item) + b"\r\n\r\n" for item in responses)


def array_body(responses: list[dict[str, Any]]) -> bytes:
    """Responses framed as one JSON array, pretty-printed, the way the stream without `alt=sse` sends them."""
    items = [json.dumps(item, indent=2, ensure_ascii=False).encode() for item in responses]
    return b"[" + b",\r\n".join(items) + b"]"


def stream_body(
    model: str,
    prompt_tokens: int,
    candidates_tokens: int,
    *,
    cached_tokens: int = 0,
    thoughts_tokens: int = 0,
    tool_use_prompt_tokens: int = 0,
    text: str = DEFAULT_TEXT,
    sse: bool = True,
) -> bytes:
    """A streamed response body: SSE (`SSE_CONTENT_TYPE`) or a JSON array (`ARRAY_STREAM_CONTENT_TYPE`)."""
    responses = stream_responses(
        model,
        prompt_tokens,
        candidates_tokens,
        cached_tokens=cached_tokens,
        thoughts_tokens=thoughts_tokens,
        tool_use_prompt_tokens=tool_use_prompt_tokens,
        text=text,
    )
    return sse_body(responses) if sse else array_body(responses)
