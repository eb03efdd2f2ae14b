"""What every LLM API module offers, and how a request's path picks one.

One module per API (`openai`, `anthropic`, `gemini`, `bedrock`), each exposing an `API`
object of this shape: its operations, the paths it serves, its default provider, and its
readers. `apis` lists them in the order paths are tried. The service never learns an API's
JSON: it asks `apis.identify` which API a request speaks, then hands that API the bodies.
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

    # The module's name, the first part of each operation's name ("openai").
    name: str
    # The catalog provider a route's `api` override implies when it names no provider.
    default_provider: str
    # The `ApiCall.api` values it reads ("openai.chat", ...), as a policy's `api` names them.
    operations: tuple[str, ...]

    def identify(self, path: str, query: str, azure_host: bool) -> ApiCall | None:
        """The call a request path names (query apart, trailing `/` stripped), or None.
        `azure_host`: the host or headers say Azure OpenAI."""
        ...

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
    default_provider: str
    operations: tuple[str, ...]
    # The call a path names (query, Azure apart: these APIs have no such variants), or None.
    identify_path: Callable[[str], ApiCall | None]
    parse_request: Callable[[bytes, ApiCall], RequestParse]
    parse_response: Callable[[bytes, ApiCall], ResponseParse]
    stream_reader: Callable[[ApiCall], UsageStream]

    def identify(self, path: str, query: str, azure_host: bool) -> ApiCall | None:
        return self.identify_path(path)

    def stream(self, call: ApiCall, *, hide_usage_chunk: bool) -> UsageStream:
        return self.stream_reader(call)
