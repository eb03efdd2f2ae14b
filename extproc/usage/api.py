"""What every LLM API module offers, and how a request's path picks one.

One module per API (`openai`, `anthropic`, `gemini`, `bedrock`), each exposing an `API`
object of this shape. The service never learns an API's JSON: it asks `identify` which API
a request speaks, then hands that API the bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from extproc.usage.model import RequestParse, ResponseParse, UsageStream


@dataclass(frozen=True, slots=True)
class ApiCall:
    """What a request's path (and host) say about the call, before any body is read."""

    # The API module's name and the operation, e.g. "openai.chat", "anthropic.messages".
    api: str
    # The catalog's provider name: "openai", "azure", "anthropic", "google", "aws".
    provider: str
    # Gemini and Bedrock name the model in the path, Azure the deployment.
    model: str | None = None
    # Gemini's streamGenerateContent and Bedrock's converse-stream stream by path.
    streaming: bool = False
    # Azure OpenAI's `api-version` query parameter: what the request body may contain.
    api_version: str | None = None


class Api(Protocol):
    """One LLM API's reader. Nothing here raises on client or upstream input."""

    name: str

    def parse_request(self, body: bytes, call: ApiCall) -> RequestParse:
        """Model, max output tokens, streaming; injects whatever makes usage reported."""
        ...

    def parse_response(self, body: bytes, call: ApiCall) -> ResponseParse:
        """Usage and model from a whole (buffered, decoded) response body."""
        ...

    def stream(self, call: ApiCall, *, hide_usage_chunk: bool) -> UsageStream:
        """A reader for a streamed response body, fed its (decoded) chunks in order."""
        ...


@dataclass(frozen=True, slots=True)
class ReportingApi:
    """An `Api` whose responses always report usage: nothing to inject, so nothing to hide.

    Anthropic, Gemini and Bedrock are such APIs; their modules hand their functions here.
    """

    name: str
    parse_request: Callable[[bytes, ApiCall], RequestParse]
    parse_response: Callable[[bytes, ApiCall], ResponseParse]
    stream_reader: Callable[[ApiCall], UsageStream]

    def stream(self, call: ApiCall, *, hide_usage_chunk: bool) -> UsageStream:
        return self.stream_reader(call)
