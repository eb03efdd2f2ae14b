"""Chat completions (`/v1/chat/completions`) and legacy completions (`/v1/completions`).

Their streams report usage only under `stream_options.include_usage`, so a streamed request
without it is rewritten to include it, and the extra usage chunk (empty `choices`) is hidden
from a client that did not ask for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from extproc.usage._body import count as _count
from extproc.usage._body import first as _first
from extproc.usage._body import load_object as _load_object
from extproc.usage._body import optional_str as _optional_str
from extproc.usage._body import tokens_for, utf8_size
from extproc.usage.model import LlmRequest, RequestParse, StreamReader
from extproc.usage.openai._common import (
    TOKENS_PER_MESSAGE,
    event_object,
    message_text_size,
    prompt_estimate,
    response_model,
    usage_of,
)
from extproc.usage.sse import DEFAULT_MAX_PENDING, SseEvent, SseSplitter

# The legacy completions API generates at most this many tokens when `max_tokens` is absent.
_COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def parse_request(body: bytes) -> RequestParse:
    """Reads a chat completions request; asks for streamed usage when the client did not.

    OpenAI streams report usage only under `stream_options.include_usage`, so a streamed
    request without it is rewritten to include it (`injected_usage`), and the response's
    extra usage chunk must then be hidden from the client.
    """
    return chat_request(body, None)


def chat_request(body: bytes, default_model: str | None) -> RequestParse:
    return _usage_injecting_request(body, default_model, _chat_limits)


def completions_request(body: bytes, default_model: str | None) -> RequestParse:
    return _usage_injecting_request(body, default_model, _completions_limits)


def _chat_limits(obj: dict[str, Any], problems: list[str]) -> tuple[int | None, int]:
    max_tokens = _max_tokens(obj, problems)
    # Each of `n` choices may use the whole limit, and each is billed.
    if max_tokens is not None:
        max_tokens *= _choices(obj, ("n",), problems)
    return max_tokens, estimate_input_tokens(obj.get("messages"), problems)


def _completions_limits(obj: dict[str, Any], problems: list[str]) -> tuple[int | None, int]:
    max_tokens = _count(obj, "max_tokens", "max_tokens", problems)
    if max_tokens is None:
        max_tokens = _COMPLETIONS_DEFAULT_MAX_TOKENS
    estimate, prompts = prompt_estimate(obj.get("prompt"), "prompt", problems)
    suffix = obj.get("suffix")
    if isinstance(suffix, str):
        estimate += tokens_for(utf8_size(suffix))
    # Every prompt gets `n` completions, and `best_of` of them are generated (and billed).
    return max_tokens * prompts * _choices(obj, ("n", "best_of"), problems), estimate


def _usage_injecting_request(
    body: bytes,
    default_model: str | None,
    limits: Callable[[dict[str, Any], list[str]], tuple[int | None, int]],
) -> RequestParse:
    """A chat or completions request: both need `stream_options.include_usage` to report usage."""
    obj, problem = _load_object(body)
    if obj is None:
        return RequestParse(request=LlmRequest(model=default_model), problem=problem)
    problems: list[str] = []
    options = obj.get("stream_options")
    client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    model = _optional_str(obj, "model", problems) or default_model
    max_tokens, estimate = limits(obj, problems)
    request = LlmRequest(
        model=model,
        max_tokens=max_tokens,
        stream=obj.get("stream") is True,
        client_wants_usage=client_wants_usage,
        estimated_input_tokens=estimate,
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
    return tokens_for(message_text_size(messages)) + TOKENS_PER_MESSAGE * len(messages)


def _max_tokens(obj: dict[str, Any], problems: list[str]) -> int | None:
    # `max_completion_tokens` replaced `max_tokens`; given both, the larger keeps a hold
    # from being too small.
    limits = [_count(obj, key, key, problems) for key in ("max_tokens", "max_completion_tokens")]
    present = [limit for limit in limits if limit is not None]
    return max(present) if present else None


def _choices(obj: dict[str, Any], keys: tuple[str, ...], problems: list[str]) -> int:
    """How many completions a request generates per prompt: the largest of `keys`, at least 1."""
    counts = [_count(obj, key, key, problems) for key in keys]
    return max([1, *(count for count in counts if count is not None)])


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


class StreamAccumulator(StreamReader):
    """Reads usage from a streamed (SSE) chat completions or completions response as it passes.

    With `hide_usage_chunk`, the usage chunk (non-null `usage`, empty `choices`) is removed
    from what the client gets, because we asked for it and clients that index `choices[0]`
    break on it; every other byte passes on unchanged, an incomplete event held back until
    it completes. Without it, chunks pass on as they are and only a copy is parsed.
    """

    def __init__(self, hide_usage_chunk: bool, max_event_bytes: int = DEFAULT_MAX_PENDING) -> None:
        self.hide_usage_chunk = hide_usage_chunk
        super().__init__()
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
            self.problem("no usage")
        return out

    def _pass_on(self, events: list[SseEvent]) -> bytes:
        return b"".join([event.raw for event in events if not self._read(event)])

    def _read(self, event: SseEvent) -> bool:
        """Takes what an event says; True when it is the usage chunk to hide."""
        obj = event_object(event, self)
        if obj is None:
            return False
        if self.model is None:
            self.model = response_model(obj)
        if obj.get("error"):
            self.problem("error event in stream")
        value = obj.get("usage")
        if value is None:
            return False
        usage, problem = usage_of(value)
        if problem is not None:
            self.problem(problem)
        if usage is not None:
            # Set, never add: a usage report is the request's total so far.
            self.usage = usage
        choices = obj.get("choices")
        return self.hide_usage_chunk and isinstance(value, dict) and isinstance(choices, list) and not choices
