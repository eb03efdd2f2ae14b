"""OpenAI's APIs: what a request asks for, and the usage its response reports.

`API` reads four operations, picked by `ApiCall.api`, each plain and (where the API can)
streamed:

- `openai.chat` (`/v1/chat/completions`) and `openai.completions` (the legacy
  `/v1/completions`): usage `prompt_tokens`, `completion_tokens` and their details. Streams
  report usage only under `stream_options.include_usage`, so we inject it and hide the extra
  usage chunk (empty `choices`) from a client that did not ask for it.
- `openai.embeddings` (`/v1/embeddings`): usage `prompt_tokens` only; never streamed.
- `openai.responses` (`/v1/responses`): usage `input_tokens`, `output_tokens` and their
  details; a stream of typed events whose terminal one (`response.completed`,
  `.incomplete` or `.failed`) carries the usage. Nothing to inject, nothing to hide.

Azure OpenAI serves the same bodies under `/openai/deployments/{deployment}/...`; the
registry passes the deployment as `call.model`, which stands in for a request body's missing
`model`. The response's `model` is the real model name, and the service prices by it.

The module-level `parse_request`, `parse_response` and `StreamAccumulator` are the chat
completions reader, kept for callers that predate `API`. Nothing here raises on client or
upstream input: problems come back as values from a closed vocabulary that telemetry counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from extproc.usage._body import count as _count
from extproc.usage._body import first as _first
from extproc.usage._body import load_object as _load_object
from extproc.usage._body import optional_str as _optional_str
from extproc.usage._body import text_size, tokens_for, utf8_size
from extproc.usage.api import ApiCall
from extproc.usage.model import LlmRequest, RequestParse, ResponseParse, Usage, UsageStream
from extproc.usage.sse import DEFAULT_MAX_PENDING, SseEvent, SseSplitter

__all__ = [
    "API",
    "CHAT",
    "COMPLETIONS",
    "EMBEDDINGS",
    "RESPONSES",
    "OpenAiApi",
    "ResponsesStream",
    "StreamAccumulator",
    "estimate_input_tokens",
    "parse_request",
    "parse_response",
]

# The operations `ApiCall.api` names for this module.
CHAT = "openai.chat"
COMPLETIONS = "openai.completions"
EMBEDDINGS = "openai.embeddings"
RESPONSES = "openai.responses"

# The prompt estimate only sizes admission holds (the response's usage is what gets charged):
# about 4 bytes of UTF-8 per token for English text, plus OpenAI's per-message framing of a
# few tokens (role and separators).
_TOKENS_PER_MESSAGE = 4
# Content parts whose strings are encoded media, not text: a base64 image is not 1 token per
# 4 bytes, and counting it so would hold far more than the call can cost. Chat completions
# name them `image_url`, `input_audio`, `file`; the Responses API `input_image`, `input_file`.
_MEDIA_PARTS = frozenset({"image_url", "input_audio", "file", "input_image", "input_file"})
# The legacy completions API generates at most this many tokens when `max_tokens` is absent.
_COMPLETIONS_DEFAULT_MAX_TOKENS = 16

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


@dataclass(frozen=True, slots=True)
class _UsageFields:
    """Where one API family keeps its token counts inside `usage`."""

    input: str
    output: str
    input_details: str
    output_details: str


_CHAT_FIELDS = _UsageFields(
    "prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details"
)
_RESPONSES_FIELDS = _UsageFields(
    "input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details"
)


class OpenAiApi:
    """The `Api` for OpenAI's operations (and Azure OpenAI's, which share their bodies)."""

    name = "openai"

    def parse_request(self, body: bytes, call: ApiCall) -> RequestParse:
        """Model, max output tokens, streaming; injects `include_usage` into chat and completions streams."""
        read = _REQUEST_READERS.get(call.api)
        if read is None:
            return RequestParse(request=LlmRequest(model=call.model), problem="unsupported operation")
        parsed = read(body, call.model)
        if parsed.injected_usage and not _accepts_stream_options(call):
            # Azure before api-version 2024-09-01 answers 400 to `stream_options`: send the
            # client's bytes as they were; the stream then reports no usage of its own.
            return RequestParse(request=parsed.request, problem="api-version takes no stream_options")
        return parsed

    def parse_response(self, body: bytes, call: ApiCall) -> ResponseParse:
        """Usage and model from a whole (buffered, decoded) response body."""
        if call.api == RESPONSES:
            return _parse_responses_response(body)
        if call.api in (CHAT, COMPLETIONS, EMBEDDINGS):
            return parse_response(body)
        return ResponseParse(problem="unsupported operation")

    def stream(self, call: ApiCall, *, hide_usage_chunk: bool) -> UsageStream:
        """A reader for a streamed (SSE) response body.

        `hide_usage_chunk` matters only for chat and completions, where we may have asked for
        the usage chunk; the Responses API reports usage unasked, so nothing is hidden there.
        """
        if call.api == RESPONSES:
            return ResponsesStream()
        if call.api in (CHAT, COMPLETIONS, EMBEDDINGS):
            return StreamAccumulator(hide_usage_chunk=hide_usage_chunk)
        return _UnsupportedStream()


# --- Requests -------------------------------------------------------------------------------

# Azure OpenAI accepts `stream_options` from this api-version on (and on every preview after).
_AZURE_STREAM_OPTIONS_SINCE = "2024-09-01"


def _accepts_stream_options(call: ApiCall) -> bool:
    if call.provider != "azure" or not call.api_version or call.api_version.startswith("v1"):
        return True
    return call.api_version[:10] >= _AZURE_STREAM_OPTIONS_SINCE


def parse_request(body: bytes) -> RequestParse:
    """Reads a chat completions request; asks for streamed usage when the client did not.

    OpenAI streams report usage only under `stream_options.include_usage`, so a streamed
    request without it is rewritten to include it (`injected_usage`), and the response's
    extra usage chunk must then be hidden from the client.
    """
    return _chat_request(body, None)


def _chat_request(body: bytes, default_model: str | None) -> RequestParse:
    return _usage_injecting_request(body, default_model, _chat_limits)


def _completions_request(body: bytes, default_model: str | None) -> RequestParse:
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
    estimate, prompts = _prompt_estimate(obj.get("prompt"), "prompt", problems)
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


def _embeddings_request(body: bytes, default_model: str | None) -> RequestParse:
    """An embeddings request: input only, no output to hold for, never streamed."""
    obj, problem = _load_object(body)
    if obj is None:
        return RequestParse(request=LlmRequest(model=default_model), problem=problem)
    problems: list[str] = []
    model = _optional_str(obj, "model", problems) or default_model
    estimate, _ = _prompt_estimate(obj.get("input"), "input", problems)
    request = LlmRequest(model=model, max_tokens=0, estimated_input_tokens=estimate)
    return RequestParse(request=request, problem=_first(problems))


def _responses_request(body: bytes, default_model: str | None) -> RequestParse:
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


_REQUEST_READERS: dict[str, Callable[[bytes, str | None], RequestParse]] = {
    CHAT: _chat_request,
    COMPLETIONS: _completions_request,
    EMBEDDINGS: _embeddings_request,
    RESPONSES: _responses_request,
}


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
    return tokens_for(_text_size(messages)) + _TOKENS_PER_MESSAGE * len(messages)


def _responses_estimate(obj: dict[str, Any], problems: list[str]) -> int:
    """`instructions` and `input` as chat messages: a string input is one user message."""
    size = 0
    messages = 0
    value = obj.get("input")
    if isinstance(value, str):
        size += utf8_size(value)
        messages += 1
    elif isinstance(value, list):
        size += _text_size(value)
        messages += len(value)
    elif value is not None:
        problems.append("input is not a string or list")
    instructions = obj.get("instructions")
    if isinstance(instructions, str):
        size += utf8_size(instructions)
        messages += 1 if instructions else 0
    elif instructions is not None:
        problems.append("instructions is not a string")
    return tokens_for(size) + _TOKENS_PER_MESSAGE * messages


def _prompt_estimate(value: Any, field: str, problems: list[str]) -> tuple[int, int]:
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


def _text_size(values: list[Any]) -> int:
    """UTF-8 bytes of every string inside `values`, media parts skipped."""
    return text_size(values, skip_types=_MEDIA_PARTS)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- Buffered responses ---------------------------------------------------------------------


def parse_response(body: bytes) -> ResponseParse:
    """Reads usage and model from a buffered chat completions, completions or embeddings response."""
    obj, problem = _load_object(body)
    if obj is None:
        return ResponseParse(problem=problem)
    model = _response_model(obj)
    value = obj.get("usage")
    if value is None:
        return ResponseParse(model=model, problem="error response" if obj.get("error") else "no usage")
    usage, problem = _usage(value)
    return ResponseParse(usage=usage, model=model, problem=problem)


def _parse_responses_response(body: bytes) -> ResponseParse:
    """Reads usage and model from a buffered Responses API `response` object.

    A failed or incomplete response still reports the tokens it used: they are counted.
    """
    obj, problem = _load_object(body)
    if obj is None:
        return ResponseParse(problem=problem)
    model = _response_model(obj)
    value = obj.get("usage")
    if value is None:
        return ResponseParse(model=model, problem="error response" if obj.get("error") else "no usage")
    usage, problem = _responses_usage(value)
    return ResponseParse(usage=usage, model=model, problem=problem)


# --- Streams --------------------------------------------------------------------------------


class StreamAccumulator:
    """Reads usage from a streamed (SSE) chat completions or completions response as it passes.

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
            _add_problem(self.problems, "no usage")
        return out

    def _pass_on(self, events: list[SseEvent]) -> bytes:
        return b"".join([event.raw for event in events if not self._read(event)])

    def _read(self, event: SseEvent) -> bool:
        """Takes what an event says; True when it is the usage chunk to hide."""
        obj = _event_object(event, self.problems)
        if obj is None:
            return False
        if self.model is None:
            self.model = _response_model(obj)
        if obj.get("error"):
            _add_problem(self.problems, "error event in stream")
        value = obj.get("usage")
        if value is None:
            return False
        usage, problem = _usage(value)
        if problem is not None:
            _add_problem(self.problems, problem)
        if usage is not None:
            # Set, never add: a usage report is the request's total so far.
            self.usage = usage
        choices = obj.get("choices")
        return self.hide_usage_chunk and isinstance(value, dict) and isinstance(choices, list) and not choices


class ResponsesStream:
    """Reads usage from a streamed Responses API call; every byte passes on untouched.

    Events are typed (`response.created`, `response.output_text.delta`, ...); those that
    carry the Response object give its model, and the terminal one (`response.completed`,
    `response.incomplete` or `response.failed`) its usage. There is no `[DONE]`.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_PENDING) -> None:
        self.usage: Usage | None = None
        self.model: str | None = None
        self.problems: list[str] = []
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
            _add_problem(self.problems, "no usage")
        return b""

    def _read(self, event: SseEvent) -> None:
        if event.oversized:
            _add_problem(self.problems, "SSE event over the size cap")
            tail = self._oversized_tail
            tail += event.raw
            if len(tail) > _USAGE_TAIL_BYTES:
                del tail[: len(tail) - _USAGE_TAIL_BYTES]
            return
        self._end_oversized()
        obj = _event_object(event, self.problems)
        if obj is None:
            return
        kind = obj.get("type")
        if not isinstance(kind, str):
            kind = event.event
        if kind == "error" or kind == _FAILED:
            _add_problem(self.problems, "error event in stream")
        response = obj.get("response")
        if not isinstance(response, dict):
            return
        model = _response_model(response)
        if model is not None:
            self.model = model
        value = response.get("usage")
        if value is None:
            return  # `response.created` and `.in_progress` carry `"usage": null`
        usage, problem = _responses_usage(value)
        if problem is not None:
            _add_problem(self.problems, problem)
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


class _UnsupportedStream:
    """Passes an operation this module does not read through untouched, and says so."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.model: str | None = None
        self.problems: list[str] = ["unsupported operation"]

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def finish(self) -> bytes:
        return b""


def _event_object(event: SseEvent, problems: list[str]) -> dict[str, Any] | None:
    """An event's JSON object, or None for anything else (problems noted where they are ours)."""
    if event.oversized:
        _add_problem(problems, "SSE event over the size cap")
        return None
    data = event.data.strip()
    # `[DONE]` ends the stream; anything else not starting like JSON is not ours to judge.
    if data == b"[DONE]" or data[:1] not in (b"{", b"["):
        return None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        _add_problem(problems, "malformed JSON in stream")
        return None
    return obj if isinstance(obj, dict) else None


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
        usage, _ = _responses_usage(value)
        if usage is not None:
            return usage
    return None


def _add_problem(problems: list[str], problem: str) -> None:
    # The vocabulary is closed, so de-duplicating bounds the list on any stream.
    if problem not in problems:
        problems.append(problem)


# --- Usage ----------------------------------------------------------------------------------


def _usage(value: Any, fields: _UsageFields = _CHAT_FIELDS) -> tuple[Usage | None, str | None]:
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


def _responses_usage(value: Any) -> tuple[Usage | None, str | None]:
    usage, problem = _usage(value, _RESPONSES_FIELDS)
    if usage is None and problem == "usage has no token counts":
        # Some OpenAI-compatible servers answer the Responses API with chat-style names.
        chat_usage, chat_problem = _usage(value, _CHAT_FIELDS)
        if chat_usage is not None:
            return chat_usage, chat_problem
    return usage, problem


def _details(usage: dict[str, Any], key: str, problems: list[str]) -> dict[str, Any]:
    value = usage.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"usage.{key} is not an object")
        return {}
    return value


# --- Fields ---------------------------------------------------------------------------------


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


def _response_model(obj: dict[str, Any]) -> str | None:
    # Azure's first streamed chunk (prompt filter results) has `"model": ""`.
    value = obj.get("model")
    return value if isinstance(value, str) and value else None


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


API = OpenAiApi()
