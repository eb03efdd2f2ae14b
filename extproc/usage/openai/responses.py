"""The Responses API (`/v1/responses`): usage `input_tokens`, `output_tokens` and their
details; a stream of typed events whose terminal one (`response.completed`, `.incomplete`
or `.failed`) carries the usage. Nothing to inject, nothing to hide.
"""

from __future__ import annotations

import json
import re
from typing import Any

from extproc.usage._body import count as _count
from extproc.usage._body import first as _first
from extproc.usage._body import load_object as _load_object
from extproc.usage._body import optional_str as _optional_str
from extproc.usage._body import tokens_for, utf8_size
from extproc.usage.model import LlmRequest, RequestParse, ResponseParse, StreamReader, Usage
from extproc.usage.openai._common import (
    CHAT_FIELDS,
    RESPONSES_FIELDS,
    TOKENS_PER_MESSAGE,
    event_object,
    message_text_size,
    parse_usage_body,
    response_model,
    usage_of,
)
from extproc.usage.sse import DEFAULT_MAX_PENDING, SseEvent, SseSplitter

# The Responses stream's terminal event for an upstream error: its usage still counts.
_FAILED = "response.failed"

# The end of a Responses stream event too large to parse whole (a `response.completed`
# carrying base64 images, say) is still searched for its usage: the Response object
# serialises `usage` after `output`, followed only by `user` and `metadata`.
_USAGE_TAIL_BYTES = 64 * 1024


_USAGE_KEY = re.compile(rb'"usage"\s*:\s*\{')

# Nested `usage` objects that fail to read are skipped, a bounded number of them.
_USAGE_TAIL_CANDIDATES = 8


_DECODER = json.JSONDecoder()


def parse_request(body: bytes, default_model: str | None) -> RequestParse:
    """A Responses API request. Its streams always report usage: nothing to inject.

    Context carried by `previous_response_id` or `conversation` lives upstream and is not
    in the estimate; the response's usage counts it.
    """
    obj, problem = _load_object(body)
    if obj is None:
        return RequestParse(request=LlmRequest(model=default_model), problem=problem)
    problems: list[str] = []
    model = _optional_str(obj, "model", problems) or default_model
    # `max_output_tokens` bounds visible output and reasoning together, as billed.
    max_tokens = _count(obj, "max_output_tokens", "max_output_tokens", problems)
    request = LlmRequest(
        model=model,
        max_tokens=max_tokens,
        stream=obj.get("stream") is True,
        estimated_input_tokens=_responses_estimate(obj, problems),
    )
    return RequestParse(request=request, problem=_first(problems))


def _responses_estimate(obj: dict[str, Any], problems: list[str]) -> int:
    """`instructions` and `input` as chat messages: a string input is one user message."""
    size = 0
    messages = 0
    value = obj.get("input")
    if isinstance(value, str):
        size += utf8_size(value)
        messages += 1
    elif isinstance(value, list):
        size += message_text_size(value)
        messages += len(value)
    elif value is not None:
        problems.append("input is not a string or list")
    instructions = obj.get("instructions")
    if isinstance(instructions, str):
        size += utf8_size(instructions)
        messages += 1 if instructions else 0
    elif instructions is not None:
        problems.append("instructions is not a string")
    return tokens_for(size) + TOKENS_PER_MESSAGE * messages


def parse_response(body: bytes) -> ResponseParse:
    """Reads usage and model from a buffered Responses API `response` object.

    A failed or incomplete response still reports the tokens it used: they are counted.
    """
    return parse_usage_body(body, responses_usage)


class ResponsesStream(StreamReader):
    """Reads usage from a streamed Responses API call; every byte passes on untouched.

    Events are typed (`response.created`, `response.output_text.delta`, ...); those that
    carry the Response object give its model, and the terminal one (`response.completed`,
    `response.incomplete` or `response.failed`) its usage. There is no `[DONE]`.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_PENDING) -> None:
        super().__init__()
        self._events = SseSplitter(max_event_bytes)
        # The last bytes of a run of events too large to parse, searched for usage at its end.
        self._oversized_tail = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        """Parses one body chunk; returns it, the same object, to pass on."""
        for event in self._events.feed(chunk):
            self._read(event)
        return chunk

    def finish(self) -> bytes:
        """Ends the stream; nothing was held back."""
        for event in self._events.flush():
            self._read(event)
        self._end_oversized()
        if self.usage is None:
            self.problem("no usage")
        return b""

    def _read(self, event: SseEvent) -> None:
        if event.oversized:
            self.problem("SSE event over the size cap")
            tail = self._oversized_tail
            tail += event.raw
            if len(tail) > _USAGE_TAIL_BYTES:
                del tail[: len(tail) - _USAGE_TAIL_BYTES]
            return
        self._end_oversized()
        obj = event_object(event, self)
        if obj is None:
            return
        kind = obj.get("type")
        if not isinstance(kind, str):
            kind = event.event
        if kind == "error" or kind == _FAILED:
            self.problem("error event in stream")
        response = obj.get("response")
        if not isinstance(response, dict):
            return
        model = response_model(response)
        if model is not None:
            self.model = model
        value = response.get("usage")
        if value is None:
            return  # `response.created` and `.in_progress` carry `"usage": null`
        usage, problem = responses_usage(value)
        if problem is not None:
            self.problem(problem)
        if usage is not None:
            # Set, never add: the terminal event reports the whole response.
            self.usage = usage

    def _end_oversized(self) -> None:
        if not self._oversized_tail:
            return
        usage = _usage_in_tail(bytes(self._oversized_tail))
        self._oversized_tail.clear()
        if usage is not None:
            self.usage = usage


def _usage_in_tail(tail: bytes) -> Usage | None:
    """The last readable `"usage": {...}` object in the end of an oversized Responses event.

    A key's quotes cannot occur unescaped inside a JSON string, so a match is a real key;
    the last one in a Response object is its own `usage` (only `user` and `metadata` follow).
    """
    matches = list(_USAGE_KEY.finditer(tail))
    for match in reversed(matches[-_USAGE_TAIL_CANDIDATES:]):
        text = tail[match.end() - 1 :].decode("utf-8", "replace")
        try:
            value, _ = _DECODER.raw_decode(text)
        except (ValueError, RecursionError):
            continue
        usage, _ = responses_usage(value)
        if usage is not None:
            return usage
    return None


def responses_usage(value: Any) -> tuple[Usage | None, str | None]:
    usage, problem = usage_of(value, RESPONSES_FIELDS)
    if usage is None and problem == "usage has no token counts":
        # Some OpenAI-compatible servers answer the Responses API with chat-style names.
        chat_usage, chat_problem = usage_of(value, CHAT_FIELDS)
        if chat_usage is not None:
            return chat_usage, chat_problem
    return usage, problem
