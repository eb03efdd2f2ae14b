"""OpenAI chat completions: what a request asks for, and the usage its response reports.

One module per LLM API, each offering `parse_request`, `parse_response` and a
`StreamAccumulator` (a `UsageStream`) over the shared types in `model`. Nothing here
raises on client or upstream input: problems come back as values from a closed vocabulary
that telemetry can count.
"""

from __future__ import annotations

import json
from typing import Any

from extproc.usage.model import LlmRequest, RequestParse, ResponseParse, Usage
from extproc.usage.sse import DEFAULT_MAX_PENDING, SseEvent, SseSplitter

# The prompt estimate only sizes admission holds (the response's usage is what gets charged):
# about 4 bytes of UTF-8 per token for English text, plus OpenAI's per-message framing of a
# few tokens (role and separators).
_BYTES_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4
# Content parts whose strings are encoded media, not text: a base64 image is not 1 token per
# 4 bytes, and counting it so would hold far more than the call can cost.
_MEDIA_PARTS = frozenset({"image_url", "input_audio", "file"})


def parse_request(body: bytes) -> RequestParse:
    """Reads a chat completions request; asks for streamed usage when the client did not.

    OpenAI streams report usage only under `stream_options.include_usage`, so a streamed
    request without it is rewritten to include it (`injected_usage`), and the response's
    extra usage chunk must then be hidden from the client.
    """
    obj, problem = _load_object(body)
    if obj is None:
        return RequestParse(problem=problem)
    problems: list[str] = []
    options = obj.get("stream_options")
    client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    request = LlmRequest(
        model=_optional_str(obj, "model", problems),
        max_tokens=_max_tokens(obj, problems),
        stream=obj.get("stream") is True,
        client_wants_usage=client_wants_usage,
        estimated_input_tokens=estimate_input_tokens(obj.get("messages"), problems),
    )
    if not request.stream or client_wants_usage:
        return RequestParse(request=request, problem=_first(problems))
    if options is not None and not isinstance(options, dict):
        # The upstream rejects such a request anyway; rewriting it could make it pass.
        problems.insert(0, "stream_options is not an object")
        return RequestParse(request=request, problem=_first(problems))
    # A dict literal keeps an existing key's position: every field and order stays put.
    obj["stream_options"] = {**(options or {}), "include_usage": True}
    rewritten = _dump(obj)
    if rewritten is None:
        problems.insert(0, "body too deeply nested to rewrite")
        return RequestParse(request=request, problem=_first(problems))
    return RequestParse(
        request=request, rewritten_body=rewritten, injected_usage=True, problem=_first(problems)
    )


def parse_response(body: bytes) -> ResponseParse:
    """Reads usage and model from a buffered (non-streamed) chat completions response."""
    obj, problem = _load_object(body)
    if obj is None:
        return ResponseParse(problem=problem)
    model = _response_model(obj)
    value = obj.get("usage")
    if value is None:
        return ResponseParse(model=model, problem="error response" if obj.get("error") else "no usage")
    usage, problem = _usage(value)
    return ResponseParse(usage=usage, model=model, problem=problem)


class StreamAccumulator:
    """Reads usage from a streamed (SSE) chat completions response as it passes through.

    With `hide_usage_chunk`, the usage chunk (non-null `usage`, empty `choices`) is removed
    from what the client gets, because we asked for it and clients that index `choices[0]`
    break on it; every other byte passes on unchanged, an incomplete event held back until
    it completes. Without it, chunks pass on as they are and only a copy is parsed.
    """

    def __init__(self, hide_usage_chunk: bool, max_event_bytes: int = DEFAULT_MAX_PENDING) -> None:
        self.hide_usage_chunk = hide_usage_chunk
        self.usage: Usage | None = None
        self.model: str | None = None
        self.problems: list[str] = []
        self._events = SseSplitter(max_event_bytes)

    def feed(self, chunk: bytes) -> bytes:
        """Parses one body chunk; returns the bytes to pass on for it."""
        events = self._events.feed(chunk)
        if not self.hide_usage_chunk:
            for event in events:
                self._read(event)
            return chunk
        return self._pass_on(events)

    def finish(self) -> bytes:
        """Ends the stream: returns what was held back.

        A last event cut off before its blank line still counts: read, and hidden if it is
        the usage chunk, like any other.
        """
        events = self._events.flush()
        if self.hide_usage_chunk:
            out = self._pass_on(events)
        else:
            for event in events:
                self._read(event)
            out = b""
        if self.usage is None:
            # Typically a stream cut short: OpenAI sends usage last.
            self._problem("no usage")
        return out

    def _pass_on(self, events: list[SseEvent]) -> bytes:
        return b"".join([event.raw for event in events if not self._read(event)])

    def _read(self, event: SseEvent) -> bool:
        """Takes what an event says; True when it is the usage chunk to hide."""
        if event.oversized:
            self._problem("SSE event over the size cap")
            return False
        data = event.data.strip()
        # `[DONE]` ends the stream; anything else not starting like JSON is not ours to judge.
        if data == b"[DONE]" or data[:1] not in (b"{", b"["):
            return False
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            self._problem("malformed JSON in stream")
            return False
        if not isinstance(obj, dict):
            return False
        if self.model is None:
            self.model = _response_model(obj)
        if obj.get("error"):
            self._problem("error event in stream")
        value = obj.get("usage")
        if value is None:
            return False
        usage, problem = _usage(value)
        if problem is not None:
            self._problem(problem)
        if usage is not None:
            # Set, never add: a usage report is the request's total so far.
            self.usage = usage
        choices = obj.get("choices")
        return self.hide_usage_chunk and isinstance(value, dict) and isinstance(choices, list) and not choices

    def _problem(self, problem: str) -> None:
        # The vocabulary is closed, so de-duplicating bounds the list on any stream.
        if problem not in self.problems:
            self.problems.append(problem)


def estimate_input_tokens(messages: Any, problems: list[str] | None = None) -> int:
    """ceil(UTF-8 bytes of the messages' strings / 4) + 4 per message.

    Every string in a message counts (text, tool call arguments, names), except inside
    media parts (`image_url`, `input_audio`, `file`), which are not estimated.
    """
    if messages is None:
        return 0
    if not isinstance(messages, list):
        if problems is not None:
            problems.append("messages is not a list")
        return 0
    size = 0
    # Iterative: a body json accepted can still nest deeper than a recursive walk may go.
    pending: list[Any] = list(messages)
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            size += len(item) if item.isascii() else len(item.encode("utf-8", "surrogatepass"))
        elif isinstance(item, dict):
            if item.get("type") not in _MEDIA_PARTS:
                pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return -(-size // _BYTES_PER_TOKEN) + _TOKENS_PER_MESSAGE * len(messages)


def _usage(value: Any) -> tuple[Usage | None, str | None]:
    """OpenAI's `usage` object as a Usage; None when it holds no token counts at all."""
    if not isinstance(value, dict):
        return None, "usage is not an object"
    problems: list[str] = []
    prompt = _count(value, "prompt_tokens", "usage.prompt_tokens", problems)
    completion = _count(value, "completion_tokens", "usage.completion_tokens", problems)
    if prompt is None and completion is None:
        return None, _first(problems) or "usage has no token counts"
    prompt = prompt or 0
    completion = completion or 0
    cached = _count(
        _details(value, "prompt_tokens_details", problems),
        "cached_tokens",
        "usage.prompt_tokens_details.cached_tokens",
        problems,
    )
    reasoning = _count(
        _details(value, "completion_tokens_details", problems),
        "reasoning_tokens",
        "usage.completion_tokens_details.reasoning_tokens",
        problems,
    )
    cached = cached or 0
    reasoning = reasoning or 0
    # Both are subsets; a larger one would price the rest of the prompt (or output) below zero.
    if cached > prompt:
        problems.append("cached_tokens exceed prompt_tokens")
        cached = prompt
    if reasoning > completion:
        problems.append("reasoning_tokens exceed completion_tokens")
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


def _count(obj: dict[str, Any], key: str, path: str, problems: list[str]) -> int | None:
    """A non-negative integer field; None when absent or null, or (with a problem) wrong."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append(f"{path} is not a non-negative integer")
        return None
    return value


def _max_tokens(obj: dict[str, Any], problems: list[str]) -> int | None:
    # `max_completion_tokens` replaced `max_tokens`; given both, the larger keeps a hold
    # from being too small.
    limits = [_count(obj, key, key, problems) for key in ("max_tokens", "max_completion_tokens")]
    present = [limit for limit in limits if limit is not None]
    return max(present) if present else None


def _optional_str(obj: dict[str, Any], key: str, problems: list[str]) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{key} is not a string")
        return None
    return value or None


def _response_model(obj: dict[str, Any]) -> str | None:
    value = obj.get("model")
    return value if isinstance(value, str) and value else None


def _load_object(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    if not body or body.isspace():
        return None, "empty body"
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers bad JSON, bad UTF-8 and over-long integer literals.
        return None, "malformed JSON"
    if not isinstance(obj, dict):
        return None, "body is not a JSON object"
    return obj, None


def _dump(obj: dict[str, Any]) -> bytes | None:
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        try:
            return text.encode()
        except UnicodeEncodeError:
            # A lone surrogate (legal JSON as an escape) has no UTF-8 form: keep it escaped.
            return json.dumps(obj, separators=(",", ":")).encode()
    except RecursionError:
        return None


def _first(problems: list[str]) -> str | None:
    return problems[0] if problems else None
