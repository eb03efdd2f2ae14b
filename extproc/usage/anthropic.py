"""Anthropic Messages (`POST /v1/messages`): what a request asks for, and the usage its response reports.

Anthropic reports usage on every response, streamed or not, so nothing is injected and
nothing is hidden: a stream's bytes always pass on untouched. Its `input_tokens` leaves out
the prompt tokens read from and written to the cache, reported beside it as
`cache_read_input_tokens` and `cache_creation_input_tokens`; the normalised `Usage` counts
all three as input, the two cache counts as its subsets.

A stream reports usage twice: `message_start` (input, cache and a first output count) and
`message_delta` (the final output count; newer API versions repeat the input and cache
counts there). Both are cumulative, so they are merged, never added.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from extproc.usage._body import count as _count
from extproc.usage._body import first as _first
from extproc.usage._body import load_object as _load_object
from extproc.usage._body import optional_str as _optional_str
from extproc.usage._body import text_size, tokens_for
from extproc.usage.api import ApiCall, ReportingApi
from extproc.usage.model import LlmRequest, RequestParse, ResponseParse, StreamReader, Usage, read_as_stream
from extproc.usage.sse import DEFAULT_MAX_PENDING, SseEvent, SseSplitter

# The prompt estimate only sizes admission holds (the response's usage is what gets charged):
# about 4 bytes of UTF-8 per token, plus a few tokens of framing per message.
_TOKENS_PER_MESSAGE = 4
# Content blocks that hold encoded media or opaque data, not text: a base64 image or PDF is
# not 1 token per 4 bytes, and counting it so would hold far more than the call can cost.
_MEDIA_BLOCKS = frozenset({"image", "document", "redacted_thinking"})
# A thinking block's signature is opaque base64 the model never reads as text.
_OPAQUE_KEYS = frozenset({"signature"})

_INPUT = "input_tokens"
_CACHE_WRITE = "cache_creation_input_tokens"
_CACHE_READ = "cache_read_input_tokens"
_OUTPUT = "output_tokens"
_FIELDS = (_INPUT, _CACHE_WRITE, _CACHE_READ, _OUTPUT)

# Stream events that never carry usage, the bulk of a stream: skipped without parsing JSON.
_CONTENT_EVENTS = frozenset({"content_block_start", "content_block_delta", "content_block_stop", "ping"})
# Whitespace (and a UTF-8 BOM) before a body's first meaningful byte.
_LEADING = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*")


def parse_request(body: bytes, call: ApiCall | None = None) -> RequestParse:
    """Reads a Messages request: model, `max_tokens`, `stream` and a prompt estimate."""
    fallback_model = call.model if call is not None else None
    obj, problem = _load_object(body)
    if obj is None:
        return RequestParse(request=LlmRequest(model=fallback_model), problem=problem)
    problems: list[str] = []
    request = LlmRequest(
        model=_optional_str(obj, "model", problems) or fallback_model,
        max_tokens=_count(obj, "max_tokens", "max_tokens", problems),
        stream=obj.get("stream") is True,
        estimated_input_tokens=estimate_input_tokens(obj.get("system"), obj.get("messages"), problems),
    )
    return RequestParse(request=request, problem=_first(problems))


def parse_response(body: bytes, call: ApiCall | None = None) -> ResponseParse:
    """Reads usage and model from a whole Messages response.

    A streamed body that reached us whole (an SSE body buffered by the proxy) is read as
    the stream it is, so a streamed call is never left unpriced for arriving in one piece.
    """
    fallback_model = call.model if call is not None else None
    if _first_byte(body) in (b"e", b"d", b":"):
        return read_as_stream(MessagesStream(call), body)
    obj, problem = _load_object(body)
    if obj is None:
        return ResponseParse(model=fallback_model, problem=problem)
    model = _model(obj) or fallback_model
    value = obj.get("usage")
    if value is None:
        is_error = obj.get("type") == "error" or obj.get("error") is not None
        return ResponseParse(model=model, problem="error response" if is_error else "no usage")
    problems: list[str] = []
    counts = _counts(value, problems)
    if not counts:
        return ResponseParse(model=model, problem=_first(problems) or "usage has no token counts")
    return ResponseParse(usage=_normalised(counts), model=model, problem=_first(problems))


class MessagesStream(StreamReader):
    """Reads usage from a streamed (SSE) Messages response as it passes through.

    Every chunk passes on as the same object; only a copy is parsed. Each usage field is
    the largest value reported for it: the counts are cumulative, so the largest is the
    latest, and taking it rather than adding means a `message_delta` that repeats the input
    and cache counts cannot double them (Envoy AI Gateway #2279), while one that omits or
    zeroes them cannot erase what `message_start` said (#1631, #2352). A backend that
    reports input and cache counts only in `message_delta` (#2290) is read too.
    """

    def __init__(self, call: ApiCall | None = None, max_event_bytes: int = DEFAULT_MAX_PENDING) -> None:
        super().__init__(call.model if call is not None else None)
        self._events = SseSplitter(max_event_bytes)
        self._counts: dict[str, int] = {}
        # A `message_delta` with usage arrived: the output count is final.
        self._final = False

    def feed(self, chunk: bytes) -> bytes:
        """Parses a copy of one body chunk; returns the chunk itself."""
        for event in self._events.feed(chunk):
            self._read(event)
        return chunk

    def finish(self) -> bytes:
        """Ends the stream: reads a last event cut off before its blank line; nothing is held."""
        for event in self._events.flush():
            self._read(event)
        if not self._counts:
            self.problem("no usage")
        elif not self._final:
            # Cut short (or an error event) before `message_delta`: output is a lower bound.
            self.problem("no final usage")
        elif _INPUT not in self._counts:
            # Output alone: `message_start` never said what the prompt cost.
            self.problem("no input usage")
        return b""

    def _read(self, event: SseEvent) -> None:
        if event.oversized:
            self.problem("SSE event over the size cap")
            return
        if event.event in _CONTENT_EVENTS:
            return
        data = event.data.strip()
        if data[:1] != b"{":
            return
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            self.problem("malformed JSON in stream")
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self.model = _model(message) or self.model
                self._merge(message.get("usage"))
        elif kind == "message_delta":
            if self._merge(obj.get("usage")):
                self._final = True
        elif kind == "error":
            self.problem("error event in stream")

    def _merge(self, value: Any) -> bool:
        """Takes one usage report; True when it held any count."""
        if value is None:
            return False
        problems: list[str] = []
        counts = _counts(value, problems)
        self.problems_from(problems)
        if not counts:
            return False
        for key, count in counts.items():
            self._counts[key] = max(self._counts.get(key, 0), count)
        self.usage = _normalised(self._counts)
        return True


def estimate_input_tokens(system: Any, messages: Any, problems: list[str] | None = None) -> int:
    """ceil(UTF-8 bytes of the prompt's strings / 4) + 4 per message.

    Every string in `system` (a string or text blocks) and in the messages counts (text,
    tool inputs and results), except inside image, document and redacted-thinking blocks
    and thinking signatures, which are not text.
    """
    if messages is not None and not isinstance(messages, list):
        if problems is not None:
            problems.append("messages is not a list")
        messages = None
    message_list: list[Any] = messages or []
    size = text_size([system, *message_list], skip_types=_MEDIA_BLOCKS, skip_keys=_OPAQUE_KEYS)
    return tokens_for(size) + _TOKENS_PER_MESSAGE * len(message_list)


def _counts(value: Any, problems: list[str]) -> dict[str, int]:
    """The token counts a `usage` object holds; absent and null ones are left out."""
    if not isinstance(value, dict):
        problems.append("usage is not an object")
        return {}
    counts: dict[str, int] = {}
    for key in _FIELDS:
        count = _count(value, key, f"usage.{key}", problems)
        if count is not None:
            counts[key] = count
    return counts


def _normalised(counts: Mapping[str, int]) -> Usage:
    """Anthropic's additive counts as a Usage: cache reads and writes join the input."""
    written = counts.get(_CACHE_WRITE, 0)
    read = counts.get(_CACHE_READ, 0)
    return Usage(
        input_tokens=counts.get(_INPUT, 0) + written + read,
        output_tokens=counts.get(_OUTPUT, 0),
        cached_input_tokens=read,
        cache_creation_input_tokens=written,
    )


def _model(obj: dict[str, Any]) -> str | None:
    value = obj.get("model")
    return value if isinstance(value, str) and value else None


def _first_byte(body: bytes) -> bytes:
    found = _LEADING.match(body)
    start = found.end() if found else 0
    return body[start : start + 1]


MESSAGES = "anthropic.messages"


def identify(path: str) -> ApiCall | None:
    """`/v1/messages`, behind any prefix (or `/messages` alone, after a prefix rewrite)."""
    if path.endswith("/v1/messages") or path == "/messages":
        return ApiCall(api=MESSAGES, provider="anthropic")
    return None


API = ReportingApi(
    "anthropic", "anthropic", (MESSAGES,), identify, parse_request, parse_response, MessagesStream
)
