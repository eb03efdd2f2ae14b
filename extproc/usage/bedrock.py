"""AWS Bedrock Converse and ConverseStream: the request's limits, the response's usage.

`POST /model/{modelId}/converse` answers one JSON object; `/converse-stream` answers AWS
event stream frames (`application/vnd.amazon.eventstream`, see `eventstream`) whose
`:event-type` header names the event: `messageStart`, `contentBlockStart`,
`contentBlockDelta`, `contentBlockStop`, `messageStop`, then `metadata`, whose JSON payload
holds `usage` and `metrics`. Errors mid-stream come as `:message-type: exception` frames.
Usage is always reported, so nothing is injected or hidden: every chunk passes on as is.

`usage` (TokenUsage) maps to `Usage` so: input = `inputTokens` + `cacheReadInputTokens` +
`cacheWriteInputTokens`; cached input = `cacheReadInputTokens`; cache creation =
`cacheWriteInputTokens`; output = `outputTokens`; reasoning = 0 (Converse does not split it
out of `outputTokens`). Bedrock's `inputTokens` counts only the input that was neither read
from nor written to the cache (the prompt caching guide: total input = inputTokens +
cacheReadInputTokens + cacheWriteInputTokens), unlike OpenAI's `prompt_tokens`; reading it
as the total would price cached prompts far below their cost. `totalTokens` is not read.

Neither body names the model: it is the path's `modelId` (`call.model`), which may be a
model id (`anthropic.claude-3-5-sonnet-20240620-v1:0`), a cross-region inference profile
(`us.…`, `global.…`) or an ARN; `pricing_model` turns it into the name the catalog prices.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from extproc.usage._body import count as _count
from extproc.usage._body import first as _first
from extproc.usage._body import load_object as _load_object
from extproc.usage._body import text_size, tokens_for
from extproc.usage.api import ApiCall, ReportingApi
from extproc.usage.eventstream import DEFAULT_MAX_MESSAGE_BYTES, EventStreamDecoder, Message
from extproc.usage.model import LlmRequest, RequestParse, ResponseParse, StreamReader, Usage, read_as_stream

__all__ = [
    "API",
    "ConverseStream",
    "estimate_input_tokens",
    "parse_request",
    "parse_response",
    "pricing_model",
]

# The prompt estimate only sizes admission holds (the response's usage is what gets charged):
# about 4 bytes of UTF-8 per token, plus a few tokens of framing per message.
_TOKENS_PER_MESSAGE = 4
# Content blocks holding encoded media or opaque data rather than text (a base64 image is
# not 1 token per 4 bytes), and reasoning signatures, which are not re-read as tokens.
_OPAQUE_KEYS = frozenset(
    {"image", "document", "video", "audio", "signature", "redactedContent", "cachePoint"}
)

# An ARN whose resource names a model id or a system-defined (cross-region) inference
# profile: the id after the slash is what genai-prices and user catalogs know. Other ARNs
# (provisioned throughput, application inference profiles, custom and imported models) name
# opaque resources and are kept whole, so a user catalog can price them by ARN.
_MODEL_ARN = re.compile(
    r"^arn:aws[a-z-]*:bedrock:[^:]*:[^:]*:(?:foundation-model|inference-profile)/(?P<id>.+)$"
)

_INPUT = "inputTokens"
_OUTPUT = "outputTokens"
_CACHE_READ = "cacheReadInputTokens"
_CACHE_WRITE = "cacheWriteInputTokens"


def pricing_model(model_id: str | None) -> str | None:
    """The name a Bedrock `modelId` prices as: the id inside a model or inference-profile ARN.

    A cross-region prefix (`us.`, `eu.`, `apac.`, `global.`) and the version suffix (`-v1:0`)
    stay: genai-prices' "aws" provider matches those ids as they are and prices a `global.`
    profile differently from a regional one (Claude Sonnet 4.5: $3 against $3.30 per 1M
    input tokens), so stripping the prefix would over-charge global calls.
    """
    if not model_id:
        return None
    found = _MODEL_ARN.match(model_id)
    return found["id"] if found else model_id


def parse_request(body: bytes, call: ApiCall | None = None) -> RequestParse:
    """Reads a Converse request: `inferenceConfig.maxTokens` and a prompt estimate.

    The model and streaming come from the path (`call`): the body names neither.
    """
    model = pricing_model(call.model) if call is not None else None
    stream = call.streaming if call is not None else False
    obj, problem = _load_object(body)
    if obj is None:
        return RequestParse(request=LlmRequest(model=model, stream=stream), problem=problem)
    problems: list[str] = []
    max_tokens = None
    config = obj.get("inferenceConfig")
    if isinstance(config, dict):
        max_tokens = _count(config, "maxTokens", "inferenceConfig.maxTokens", problems)
    elif config is not None:
        problems.append("inferenceConfig is not an object")
    request = LlmRequest(
        model=model,
        max_tokens=max_tokens,
        stream=stream,
        estimated_input_tokens=estimate_input_tokens(obj.get("messages"), obj.get("system"), problems),
    )
    return RequestParse(request=request, problem=_first(problems))


def parse_response(body: bytes, call: ApiCall | None = None) -> ResponseParse:
    """Reads usage from a whole Converse response; the model is the path's.

    A ConverseStream body that reached us whole (event stream frames start with a zero
    byte: a message is far under 16 MiB) is read as the stream it is, so a streamed call is
    never left unpriced for arriving in one piece.
    """
    model = pricing_model(call.model) if call is not None else None
    if body[:1] == b"\x00":
        return read_as_stream(ConverseStream(call), body)
    obj, problem = _load_object(body)
    if obj is None:
        return ResponseParse(model=model, problem=problem)
    value = obj.get("usage")
    if value is None:
        # Bedrock's errors are `{"message": "..."}` (the type is in `x-amzn-ErrorType`).
        is_error = "output" not in obj and any(
            isinstance(obj.get(key), str) for key in ("message", "Message")
        )
        return ResponseParse(model=model, problem="error response" if is_error else "no usage")
    usage, problem = _usage(value)
    return ResponseParse(usage=usage, model=model, problem=problem)


class ConverseStream(StreamReader):
    """Reads usage from a ConverseStream response as it passes through.

    Every chunk passes on as the same object; only a copy is decoded. The `metadata` event
    carries the usage; a later one replaces an earlier one (set, never add).
    """

    def __init__(
        self, call: ApiCall | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        super().__init__(pricing_model(call.model) if call is not None else None)
        self._frames = EventStreamDecoder(max_message_bytes)

    def feed(self, chunk: bytes) -> bytes:
        """Decodes a copy of one body chunk; returns the chunk itself."""
        for message in self._frames.feed(chunk):
            self._read(message)
        self._take_frame_problems()
        return chunk

    def finish(self) -> bytes:
        """Ends the stream; nothing is ever held back, so nothing is returned."""
        self._frames.finish()
        self._take_frame_problems()
        if self.usage is None:
            # Typically a stream cut short or ended by an exception: metadata comes last.
            self.problem("no usage")
        return b""

    def _read(self, message: Message) -> None:
        message_type = message.headers.get(":message-type")
        if message_type in ("exception", "error"):
            # `exception` carries a modelled error (throttlingException, ...), `error` the
            # event stream's own (`:error-code`); either way the response stops here.
            self.problem("error event in stream")
            return
        if message_type != "event" or message.headers.get(":event-type") != "metadata":
            return
        try:
            obj = json.loads(message.payload)
        except (ValueError, RecursionError):
            self.problem("malformed JSON in stream")
            return
        if not isinstance(obj, dict) or "usage" not in obj:
            self.problem("metadata event without usage")
            return
        usage, problem = _usage(obj["usage"])
        if problem is not None:
            self.problem(problem)
        if usage is not None:
            self.usage = usage

    def _take_frame_problems(self) -> None:
        self.problems_from(self._frames.problems)


def estimate_input_tokens(messages: Any, system: Any = None, problems: list[str] | None = None) -> int:
    """ceil(UTF-8 bytes of the prompt's strings / 4) + 4 per message.

    Every string in the messages and system blocks counts (text, tool use input, tool
    results, guard content, reasoning text), except media (image, document, video, audio),
    reasoning signatures and cache points.
    """
    if messages is not None and not isinstance(messages, list):
        if problems is not None:
            problems.append("messages is not a list")
        messages = None
    if system is not None and not isinstance(system, list):
        if problems is not None:
            problems.append("system is not a list")
        system = None
    turns: list[Any] = messages or []
    size = text_size([system, *turns], skip_keys=_OPAQUE_KEYS)
    return tokens_for(size) + _TOKENS_PER_MESSAGE * len(turns)


def _usage(value: Any) -> tuple[Usage | None, str | None]:
    """Bedrock's TokenUsage as a Usage; None when it holds no token counts at all."""
    if not isinstance(value, dict):
        return None, "usage is not an object"
    problems: list[str] = []
    fresh = _count(value, _INPUT, f"usage.{_INPUT}", problems)
    output = _count(value, _OUTPUT, f"usage.{_OUTPUT}", problems)
    read = _count(value, _CACHE_READ, f"usage.{_CACHE_READ}", problems) or 0
    written = _count(value, _CACHE_WRITE, f"usage.{_CACHE_WRITE}", problems) or 0
    if fresh is None and output is None and not read and not written:
        return None, _first(problems) or "usage has no token counts"
    usage = Usage(
        # The cache counts are reported beside `inputTokens`, not inside it.
        input_tokens=(fresh or 0) + read + written,
        output_tokens=output or 0,
        cached_input_tokens=read,
        cache_creation_input_tokens=written,
    )
    return usage, _first(problems)


CONVERSE = "bedrock.converse"
_PATH = re.compile(r"/model/(?P<model>[^/]+)/(?P<op>converse|converse-stream)$")


def identify(path: str) -> ApiCall | None:
    """`/model/{modelId}/converse` or `/converse-stream`."""
    if m := _PATH.search(path):
        return ApiCall(
            api=CONVERSE, provider="aws", model=unquote(m["model"]), streaming=m["op"] == "converse-stream"
        )
    return None


API = ReportingApi("bedrock", "aws", (CONVERSE,), identify, parse_request, parse_response, ConverseStream)
