"""Google Gemini `generateContent` / `streamGenerateContent`: the request's limits, the response's usage.

The same API under the Gemini Developer API (`/v1beta/models/{model}:generateContent`) and
Vertex AI (`/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:...`). The model
is named by the path (the registry puts it in `call.model`), streaming by the method. Every
response (each streamed chunk too) carries `usageMetadata`, so nothing is injected or hidden.

`usageMetadata` maps to `Usage` so: input = `promptTokenCount` (cached content included) +
`toolUsePromptTokenCount`; cached input = `cachedContentTokenCount`; output =
`candidatesTokenCount` + `thoughtsTokenCount` (thoughts are not part of the candidates'
count); reasoning = `thoughtsTokenCount`. Zero counts are omitted on the wire (proto3 JSON),
so an absent count is 0.

A stream comes in one of two framings: with `?alt=sse`, server-sent events whose `data` is a
whole response; without it, one JSON array of responses sent in pieces. Each piece's
`usageMetadata` is cumulative, so counts are merged, never added.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from extproc.usage._body import count, text_size, tokens_for
from extproc.usage._body import first as _first
from extproc.usage._body import load_object as _load_object
from extproc.usage.api import ApiCall, ReportingApi
from extproc.usage.model import LlmRequest, RequestParse, ResponseParse, StreamReader, Usage, read_as_stream
from extproc.usage.sse import DEFAULT_MAX_PENDING, SseEvent, SseSplitter

# The prompt estimate only sizes admission holds (the response's usage is what gets charged):
# about 4 bytes of UTF-8 per token, plus a few tokens of framing per content turn.
_TOKENS_PER_CONTENT = 4
# Part fields holding encoded media or opaque data, not text (both JSON spellings the REST
# API accepts): a base64 image is not 1 token per 4 bytes.
_OPAQUE_KEYS = frozenset(
    {"inlineData", "inline_data", "fileData", "file_data", "thoughtSignature", "thought_signature"}
)

_PROMPT = "promptTokenCount"
_CACHED = "cachedContentTokenCount"
_CANDIDATES = "candidatesTokenCount"
_THOUGHTS = "thoughtsTokenCount"
_TOOL_PROMPT = "toolUsePromptTokenCount"
_FIELDS = (_PROMPT, _CACHED, _CANDIDATES, _THOUGHTS, _TOOL_PROMPT)

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = re.compile(rb"[ \t\r\n]*")


def parse_request(body: bytes, call: ApiCall | None = None) -> RequestParse:
    """Reads a generateContent request: `maxOutputTokens` and a prompt estimate.

    The model and streaming come from the path (`call`): the body names neither. Both JSON
    spellings the REST API accepts (`generationConfig`, `generation_config`) are read.
    """
    model = call.model if call is not None else None
    stream = call.streaming if call is not None else False
    obj, problem = _load_object(body)
    if obj is None:
        return RequestParse(request=LlmRequest(model=model, stream=stream), problem=problem)
    problems: list[str] = []
    max_tokens = None
    config = _field(obj, "generationConfig", "generation_config")
    if isinstance(config, dict):
        max_tokens = _count(config, _spelling(config, "maxOutputTokens", "max_output_tokens"), problems)
    elif config is not None:
        problems.append("generationConfig is not an object")
    request = LlmRequest(
        model=model,
        max_tokens=max_tokens,
        stream=stream,
        estimated_input_tokens=estimate_input_tokens(
            obj.get("contents"), _field(obj, "systemInstruction", "system_instruction"), problems
        ),
    )
    return RequestParse(request=request, problem=_first(problems))


def parse_response(body: bytes, call: ApiCall | None = None) -> ResponseParse:
    """Reads usage and model from a whole generateContent response.

    A streamed body that reached us whole (the JSON array, or SSE) is read as the stream it
    is, so a streamed call is never left unpriced for arriving in one piece.
    """
    fallback_model = call.model if call is not None else None
    if _first_byte(body) not in (b"{", b""):
        return read_as_stream(GenerateContentStream(call), body)
    obj, problem = _load_object(body)
    if obj is None:
        return ResponseParse(model=fallback_model, problem=problem)
    model = _model(obj) or fallback_model
    value = obj.get("usageMetadata")
    if value is None:
        return ResponseParse(
            model=model, problem="error response" if obj.get("error") is not None else "no usage"
        )
    problems: list[str] = []
    counts = _counts(value, problems)
    if not counts:
        return ResponseParse(model=model, problem=_first(problems) or "usage has no token counts")
    usage = _normalised(counts, problems)
    return ResponseParse(usage=usage, model=model, problem=_first(problems))


class GenerateContentStream(StreamReader):
    """Reads usage from a streamed generateContent response, in either framing, as it passes.

    Every chunk passes on as the same object; only a copy is parsed. The framing is decided
    by the first byte that is not whitespace: `[` (or `{`) is the JSON array, anything else
    SSE. Each usage count is the largest value reported for it: the counts are cumulative,
    so the largest is the latest, and a chunk that omits a count cannot erase it.
    """

    def __init__(self, call: ApiCall | None = None, max_element_bytes: int = DEFAULT_MAX_PENDING) -> None:
        super().__init__(call.model if call is not None else None)
        self._max_element_bytes = max_element_bytes
        self._counts: dict[str, int] = {}
        # Until the framing is known: a partial BOM at the start of the stream, at most.
        self._undecided = b""
        self._at_start = True
        self._events: SseSplitter | None = None
        self._values: JsonValueSplitter | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Parses a copy of one body chunk; returns the chunk itself."""
        data = chunk
        if self._events is None and self._values is None:
            data = self._decide(self._undecided + chunk)
        if self._events is not None:
            for event in self._events.feed(data):
                self._read_event(event)
        elif self._values is not None:
            for value in self._values.feed(data):
                self._read(value)
        return chunk

    def finish(self) -> bytes:
        """Ends the stream: reads what was still pending; nothing is held."""
        if self._events is not None:
            for event in self._events.flush():
                self._read_event(event)
        elif self._values is not None:
            for value in self._values.flush():
                self._read(value)
        if self.usage is None:
            self.problem("no usage")
        else:
            problems: list[str] = []
            _normalised(self._counts, problems)
            self.problems_from(problems)
        return b""

    def _decide(self, data: bytes) -> bytes:
        """Picks the framing once a meaningful byte arrives; returns the bytes to parse."""
        start = 0
        if self._at_start:
            if len(data) < len(_BOM) and _BOM.startswith(data):
                # Nothing yet, or what may be the start of a BOM: wait for more.
                self._undecided = data
                return b""
            self._at_start = False
            if data.startswith(_BOM):
                start = len(_BOM)
        rest = data[_skip(_WHITESPACE, data, start) :]
        # Leading whitespace means nothing in either framing: it is not kept.
        self._undecided = b""
        if not rest:
            return b""
        if rest[:1] in (b"[", b"{"):
            self._values = JsonValueSplitter(self.problem, self._max_element_bytes)
        else:
            self._events = SseSplitter(self._max_element_bytes)
        return rest

    def _read_event(self, event: SseEvent) -> None:
        if event.oversized:
            self.problem("SSE event over the size cap")
            return
        data = event.data.strip()
        if data[:1] != b"{":
            return
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            self.problem("malformed JSON in stream")
            return
        self._read(value)

    def _read(self, obj: Any) -> None:
        """Takes what one streamed response says."""
        if not isinstance(obj, dict):
            return
        self.model = _model(obj) or self.model
        if obj.get("error") is not None:
            self.problem("error event in stream")
        value = obj.get("usageMetadata")
        if value is None:
            return
        problems: list[str] = []
        counts = _counts(value, problems)
        self.problems_from(problems)
        if not counts:
            return
        for key, value in counts.items():
            self._counts[key] = max(self._counts.get(key, 0), value)
        # Subset checks wait for `finish`: mid-stream, a chunk may not yet have every count.
        self.usage = _normalised(self._counts, [])


# Outside any string, the characters that change nesting; inside one, those that may end it.
_STRUCTURE = re.compile(r'[{}"]')
_STRING_END = re.compile(r'["\\]')
# Between top-level values: JSON whitespace and the array's own brackets and commas.
_SEPARATORS = re.compile(r"[ \t\r\n\[\],]*")


class JsonValueSplitter:
    """Turns a JSON array of objects, cut at arbitrary bytes, into its parsed objects.

    Built for Gemini's non-SSE stream (`[{...}\\r\\n,{...}]`): bytes are decoded incrementally
    (a UTF-8 character may be cut), and a scanner that knows strings and escapes finds where
    each top-level object ends, in time linear in the bytes fed. Only the object being read
    is buffered; one longer than `max_bytes` characters is skipped with a problem instead of
    kept, and reading resumes after it. Top-level objects with no array around them read too.
    """

    def __init__(self, report: Callable[[str], None], max_bytes: int = DEFAULT_MAX_PENDING) -> None:
        self._report = report
        self._max = max_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        # The current object's text so far (empty between objects or while skipping one).
        self._buf = ""
        self._depth = 0
        self._in_string = False
        # The last character fed was a backslash inside a string: the next one is escaped.
        self._escaped = False
        self._skipping = False
        # Something that is not an object appeared between objects: reading stops there.
        self._broken = False

    def feed(self, data: bytes) -> list[Any]:
        """Adds bytes; returns the objects they completed, in order."""
        return self._scan(self._decoder.decode(data))

    def flush(self) -> list[Any]:
        """Ends the input: returns what the last bytes completed; a cut-off object is a problem."""
        values = self._scan(self._decoder.decode(b"", final=True))
        if self._depth and not self._broken:
            self._report("stream cut mid-element")
        return values

    def _scan(self, text: str) -> list[Any]:
        values: list[Any] = []
        if self._broken or not text:
            return values
        pos = 0
        if self._escaped:
            self._escaped = False
            pos = 1
        size = len(text)
        # Where this call's part of the current object starts in `text`.
        start = 0 if self._depth else size
        while pos < size:
            if self._depth == 0:
                pos = _skip(_SEPARATORS, text, pos)
                if pos == size:
                    break
                if text[pos] != "{":
                    self._report("malformed JSON in stream")
                    self._broken = True
                    self._buf = ""
                    return values
                start = pos
                self._depth = 1
                pos += 1
            elif self._in_string:
                found = _STRING_END.search(text, pos)
                if found is None:
                    pos = size
                elif found.group() == "\\":
                    if found.end() == size:
                        self._escaped = True
                    pos = found.end() + 1
                else:
                    self._in_string = False
                    pos = found.end()
            else:
                found = _STRUCTURE.search(text, pos)
                if found is None:
                    pos = size
                    continue
                pos = found.end()
                char = found.group()
                if char == '"':
                    self._in_string = True
                elif char == "{":
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth == 0:
                        self._end_object(text[start:pos], values)
                        start = size
        if self._depth:
            self._keep(text[start:size] if start < size else "")
        return values

    def _keep(self, piece: str) -> None:
        """Buffers the current object's next piece, unless it has grown past the cap."""
        if self._skipping:
            return
        if len(self._buf) + len(piece) > self._max:
            self._report("stream element over the size cap")
            self._skipping = True
            self._buf = ""
            return
        self._buf += piece

    def _end_object(self, tail: str, values: list[Any]) -> None:
        text, self._buf = self._buf + tail, ""
        if self._skipping:
            self._skipping = False
            return
        if len(text) > self._max:
            self._report("stream element over the size cap")
            return
        try:
            values.append(json.loads(text))
        except (ValueError, RecursionError):
            self._report("malformed JSON in stream")


def estimate_input_tokens(
    contents: Any, system_instruction: Any = None, problems: list[str] | None = None
) -> int:
    """ceil(UTF-8 bytes of the prompt's strings / 4) + 4 per content turn.

    Every string in the contents and the system instruction counts (text, function calls
    and responses), except inline and file media and thought signatures.
    """
    if contents is not None and not isinstance(contents, list):
        if problems is not None:
            problems.append("contents is not a list")
        contents = None
    turns: list[Any] = contents or []
    size = text_size([system_instruction, *turns], skip_keys=_OPAQUE_KEYS)
    return tokens_for(size) + _TOKENS_PER_CONTENT * len(turns)


def _counts(value: Any, problems: list[str]) -> dict[str, int]:
    """The token counts a `usageMetadata` object holds; absent and null ones are left out."""
    if not isinstance(value, dict):
        problems.append("usageMetadata is not an object")
        return {}
    counts: dict[str, int] = {}
    for key in _FIELDS:
        count = _count(value, key, problems, f"usageMetadata.{key}")
        if count is not None:
            counts[key] = count
    return counts


def _normalised(counts: Mapping[str, int], problems: list[str]) -> Usage:
    """Gemini's counts as a Usage: tool-use prompts join the input, thoughts the output."""
    prompt = counts.get(_PROMPT, 0)
    cached = counts.get(_CACHED, 0)
    thoughts = counts.get(_THOUGHTS, 0)
    if cached > prompt:
        # A subset larger than its whole would price the rest of the prompt below zero.
        problems.append("cachedContentTokenCount exceeds promptTokenCount")
        cached = prompt
    return Usage(
        input_tokens=prompt + counts.get(_TOOL_PROMPT, 0),
        output_tokens=counts.get(_CANDIDATES, 0) + thoughts,
        cached_input_tokens=cached,
        reasoning_tokens=thoughts,
    )


def _count(obj: dict[str, Any], key: str, problems: list[str], path: str | None = None) -> int | None:
    return count(obj, key, path or key, problems)


def _field(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _spelling(obj: dict[str, Any], camel: str, snake: str) -> str:
    """Which of a field's two JSON spellings the object uses (camelCase when neither)."""
    return snake if obj.get(camel) is None and obj.get(snake) is not None else camel


def _model(obj: dict[str, Any]) -> str | None:
    value = obj.get("modelVersion")
    return value if isinstance(value, str) and value else None


def _first_byte(body: bytes) -> bytes:
    start = _skip(_WHITESPACE, body, len(_BOM) if body.startswith(_BOM) else 0)
    return body[start : start + 1]


def _skip(pattern: re.Pattern[Any], text: Any, pos: int) -> int:
    """Where a run of `pattern` (which matches the empty string too) starting at `pos` ends."""
    found = pattern.match(text, pos)
    return found.end() if found else pos


GENERATE = "gemini.generate"
_PATH = re.compile(r"/models/(?P<model>[^/:]+):(?P<op>generateContent|streamGenerateContent)$")


def identify(path: str) -> ApiCall | None:
    """`.../models/{model}:generateContent` or `:streamGenerateContent` (Gemini API, Vertex AI)."""
    if m := _PATH.search(path):
        return ApiCall(
            api=GENERATE,
            provider="google",
            model=unquote(m["model"]),
            streaming=m["op"] == "streamGenerateContent",
        )
    return None


API = ReportingApi(
    "gemini", "google", (GENERATE,), identify, parse_request, parse_response, GenerateContentStream
)
