"""What OpenAI's operations share: the usage object, prompt estimates, SSE event bodies."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from extproc.usage._body import count as _count
from extproc.usage._body import first as _first
from extproc.usage._body import load_object as _load_object
from extproc.usage._body import text_size, tokens_for, utf8_size
from extproc.usage.model import ResponseParse, StreamReader, Usage
from extproc.usage.sse import SseEvent

# The prompt estimate only sizes admission holds (the response's usage is what gets charged):
# about 4 bytes of UTF-8 per token for English text, plus OpenAI's per-message framing of a
# few tokens (role and separators).
TOKENS_PER_MESSAGE = 4


# Content parts whose strings are encoded media, not text: a base64 image is not 1 token per
# 4 bytes, and counting it so would hold far more than the call can cost. Chat completions
# name them `image_url`, `input_audio`, `file`; the Responses API `input_image`, `input_file`.
_MEDIA_PARTS = frozenset({"image_url", "input_audio", "file", "input_image", "input_file"})


@dataclass(frozen=True, slots=True)
class _UsageFields:
    """Where one API family keeps its token counts inside `usage`."""

    input: str
    output: str
    input_details: str
    output_details: str


CHAT_FIELDS = _UsageFields(
    "prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details"
)


RESPONSES_FIELDS = _UsageFields(
    "input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details"
)


def parse_response(body: bytes) -> ResponseParse:
    """Reads usage and model from a buffered chat completions, completions or embeddings response."""
    return parse_usage_body(body, usage_of)


def parse_usage_body(
    body: bytes, read_usage: Callable[[Any], tuple[Usage | None, str | None]]
) -> ResponseParse:
    """A buffered response object's model and its `usage`, read by `read_usage`."""
    obj, problem = _load_object(body)
    if obj is None:
        return ResponseParse(problem=problem)
    model = response_model(obj)
    value = obj.get("usage")
    if value is None:
        return ResponseParse(model=model, problem="error response" if obj.get("error") else "no usage")
    usage, problem = read_usage(value)
    return ResponseParse(usage=usage, model=model, problem=problem)


def usage_of(value: Any, fields: _UsageFields = CHAT_FIELDS) -> tuple[Usage | None, str | None]:
    """An OpenAI `usage` object as a Usage; None when it holds no token counts at all.

    Chat and completions: `prompt_tokens` (cached included) and `completion_tokens`
    (reasoning included); embeddings report `prompt_tokens` alone. The Responses API names
    the same counts `input_tokens` and `output_tokens`.
    """
    if not isinstance(value, dict):
        return None, "usage is not an object"
    problems: list[str] = []
    prompt = _count(value, fields.input, f"usage.{fields.input}", problems)
    completion = _count(value, fields.output, f"usage.{fields.output}", problems)
    if prompt is None and completion is None:
        return None, _first(problems) or "usage has no token counts"
    prompt = prompt or 0
    completion = completion or 0
    cached = _count(
        _details(value, fields.input_details, problems),
        "cached_tokens",
        f"usage.{fields.input_details}.cached_tokens",
        problems,
    )
    reasoning = _count(
        _details(value, fields.output_details, problems),
        "reasoning_tokens",
        f"usage.{fields.output_details}.reasoning_tokens",
        problems,
    )
    cached = cached or 0
    reasoning = reasoning or 0
    # Both are subsets; a larger one would price the rest of the prompt (or output) below zero.
    if cached > prompt:
        problems.append(f"cached_tokens exceed {fields.input}")
        cached = prompt
    if reasoning > completion:
        problems.append(f"reasoning_tokens exceed {fields.output}")
        reasoning = completion
    usage = Usage(
        input_tokens=prompt,
        output_tokens=completion,
        cached_input_tokens=cached,
        reasoning_tokens=reasoning,
    )
    return usage, _first(problems)


def _details(usage: dict[str, Any], key: str, problems: list[str]) -> dict[str, Any]:
    value = usage.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"usage.{key} is not an object")
        return {}
    return value


def response_model(obj: dict[str, Any]) -> str | None:
    # Azure's first streamed chunk (prompt filter results) has `"model": ""`.
    value = obj.get("model")
    return value if isinstance(value, str) and value else None


def event_object(event: SseEvent, reader: StreamReader) -> dict[str, Any] | None:
    """An event's JSON object, or None for anything else (problems noted where they are ours)."""
    if event.oversized:
        reader.problem("SSE event over the size cap")
        return None
    data = event.data.strip()
    # `[DONE]` ends the stream; anything else not starting like JSON is not ours to judge.
    if data == b"[DONE]" or data[:1] not in (b"{", b"["):
        return None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        reader.problem("malformed JSON in stream")
        return None
    return obj if isinstance(obj, dict) else None


def prompt_estimate(value: Any, field: str, problems: list[str]) -> tuple[int, int]:
    """(estimated tokens, number of prompts) of a completions `prompt` or embeddings `input`.

    Either takes a string, a list of strings, a token array or a list of token arrays; token
    arrays are counted exactly, strings estimated from their size.
    """
    if value is None:
        return 0, 1
    if isinstance(value, str):
        return tokens_for(utf8_size(value)), 1
    if not isinstance(value, list):
        problems.append(f"{field} is not a string or list")
        return 0, 1
    if all(_is_token(item) for item in value):
        return len(value), 1
    size = 0
    tokens = 0
    for item in value:
        if isinstance(item, str):
            size += utf8_size(item)
        elif isinstance(item, list):
            tokens += len(item)
    return tokens + tokens_for(size), len(value)


def message_text_size(values: list[Any]) -> int:
    """UTF-8 bytes of every string inside `values`, media parts skipped."""
    return text_size(values, skip_types=_MEDIA_PARTS)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
