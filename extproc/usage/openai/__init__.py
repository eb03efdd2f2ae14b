"""OpenAI's APIs: what a request asks for, and the usage its response reports.

`API` reads four operations, picked by `ApiCall.api`, one module each, plain and (where
the API can) streamed:

- `openai.chat` (`/v1/chat/completions`) and `openai.completions` (the legacy
  `/v1/completions`), in `chat`: usage `prompt_tokens`, `completion_tokens` and their
  details. Streams report usage only under `stream_options.include_usage`, so we inject it
  and hide the extra usage chunk (empty `choices`) from a client that did not ask for it.
- `openai.embeddings` (`/v1/embeddings`), in `embeddings`: usage `prompt_tokens` only.
- `openai.responses` (`/v1/responses`), in `responses`: typed events, the terminal one
  carrying the usage. Nothing to inject, nothing to hide.

Azure OpenAI serves the same bodies under `/openai/deployments/{deployment}/...`; `identify`
passes the deployment as `call.model`, which stands in for a request body's missing
`model`. The response's `model` is the real model name, and the service prices by it.

The package-level `parse_request`, `parse_response` and `StreamAccumulator` are the chat
completions reader, kept for callers that predate `API`. Nothing here raises on client or
upstream input: problems come back as values from a closed vocabulary that telemetry counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs, unquote

from extproc.usage.api import ApiCall
from extproc.usage.model import LlmRequest, RequestParse, ResponseParse, StreamReader, UsageStream
from extproc.usage.openai import chat, embeddings, responses
from extproc.usage.openai._common import parse_response
from extproc.usage.openai.chat import StreamAccumulator, estimate_input_tokens, parse_request
from extproc.usage.openai.responses import ResponsesStream

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

# Paths are matched by their ending, so a route prefix in front does not matter.
_AZURE_DEPLOYMENT = re.compile(
    r"/openai/deployments/(?P<dep>[^/]+)/(?P<op>chat/completions|completions|embeddings)$"
)
_AZURE_OPERATIONS = {"chat/completions": CHAT, "completions": COMPLETIONS, "embeddings": EMBEDDINGS}
_AZURE_RESPONSES = re.compile(r"/openai/(?:v1/)?responses$")
_SUFFIXES = (
    ("/chat/completions", CHAT),
    ("/completions", COMPLETIONS),
    ("/embeddings", EMBEDDINGS),
    ("/responses", RESPONSES),
)
# Azure OpenAI accepts `stream_options` from this api-version on (and on every preview after).
_AZURE_STREAM_OPTIONS_SINCE = "2024-09-01"

_REQUEST_READERS: dict[str, Callable[[bytes, str | None], RequestParse]] = {
    CHAT: chat.chat_request,
    COMPLETIONS: chat.completions_request,
    EMBEDDINGS: embeddings.parse_request,
    RESPONSES: responses.parse_request,
}


class OpenAiApi:
    """The `Api` for OpenAI's operations (and Azure OpenAI's, which share their bodies)."""

    name = "openai"
    default_provider = "openai"
    operations = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES)

    def identify(self, path: str, query: str, azure_host: bool) -> ApiCall | None:
        """The call a path (without its query, trailing `/` stripped) names, or None.
        `azure_host`: the host or headers say Azure OpenAI, on the paths both serve."""
        if m := _AZURE_DEPLOYMENT.search(path):
            return ApiCall(
                api=_AZURE_OPERATIONS[m["op"]],
                provider="azure",
                model=unquote(m["dep"]),
                api_version=_api_version(query),
            )
        if _AZURE_RESPONSES.search(path):
            return ApiCall(api=RESPONSES, provider="azure", api_version=_api_version(query))
        for suffix, api in _SUFFIXES:
            if path.endswith(suffix):
                return ApiCall(api=api, provider="azure" if azure_host else "openai")
        return None

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
            return responses.parse_response(body)
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


def _api_version(query: str) -> str | None:
    values = parse_qs(query).get("api-version")
    return values[0] if values else None


def _accepts_stream_options(call: ApiCall) -> bool:
    if call.provider != "azure" or not call.api_version or call.api_version.startswith("v1"):
        return True
    return call.api_version[:10] >= _AZURE_STREAM_OPTIONS_SINCE


class _UnsupportedStream(StreamReader):
    """Passes an operation this module does not read through untouched, and says so."""

    def __init__(self) -> None:
        super().__init__()
        self.problem("unsupported operation")

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def finish(self) -> bytes:
        return b""


API = OpenAiApi()
