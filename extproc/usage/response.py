"""One response, read for its usage: from its headers and body, or from its body alone.

`ResponseReader` is fed what Envoy shows of a response (the status and headers when they
are sent, then the body's chunks) and ends in a `Reading`: the usage and model the API
reported, or the problem that kept them unknown, with what an estimate would need.
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.usage import apis
from extproc.usage.api import ApiCall
from extproc.usage.encoding import DecodedStream, decode_body, encoding_by_magic
from extproc.usage.model import Usage, UsageStream

# Response content types that stream: SSE (OpenAI, Anthropic, Gemini) and Bedrock's frames.
STREAM_TYPES = ("text/event-stream", "application/vnd.amazon.eventstream")
# How an SSE body starts, when no content type said so (a body read alone).
_SSE_STARTS = (b"data: ", b"event:", b"data:{")


@dataclass(frozen=True, slots=True)
class Reading:
    """What a response showed of its usage."""

    usage: Usage | None
    model: str | None
    problem: str | None
    # 0 when the headers were not read (body alone).
    status: int
    # Body bytes seen, for an estimate when the response reported no usage.
    body_bytes: int
    streamed: bool

    @property
    def responded(self) -> bool:
        return bool(self.status or self.body_bytes)


class ResponseReader:
    """Reads one response. `call` None: an API no parser reads (the body is only counted).

    `body_only`: Envoy sends no response headers, so the coding and whether the body
    streams are told by the request (`request_streams`) and the body's first bytes.
    `hide_usage_chunk`: the request was rewritten to ask for a usage chunk the client did
    not ask for; the stream reader takes it out again.
    """

    __slots__ = (
        "_body",
        "_stream",
        "body_bytes",
        "body_only",
        "call",
        "content_encoding",
        "hide_usage_chunk",
        "request_streams",
        "status",
    )

    def __init__(
        self, call: ApiCall | None, *, request_streams: bool, hide_usage_chunk: bool, body_only: bool
    ) -> None:
        self.call = call
        self.request_streams = request_streams
        self.hide_usage_chunk = hide_usage_chunk
        self.body_only = body_only
        self.status = 0
        self.content_encoding = ""
        self.body_bytes = 0
        self._stream: UsageStream | None = None
        self._body = bytearray()

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    def headers(self, status: int, content_encoding: str, content_type: str) -> bool:
        """The response headers (they came after all, when `body_only`). True: the body
        streams, and should be sent as it comes."""
        self.status = status
        self.body_only = False
        self.content_encoding = content_encoding
        return self._start_stream(self.call is not None and content_type.startswith(STREAM_TYPES))

    def feed(self, chunk: bytes, end: bool) -> bytes | None:
        """One body chunk; the bytes to pass on instead of it, or None to pass it as is."""
        if self.body_only and chunk:
            # What the headers would have said, from the request and the first chunk (an
            # encoding the upstream used although asked for identity, an SSE stream).
            self.body_only = False
            self.content_encoding = encoding_by_magic(chunk)
            sse = not self.content_encoding and chunk.lstrip()[:6] in _SSE_STARTS
            self._start_stream(self.request_streams or sse)
        self.body_bytes += len(chunk)
        stream = self._stream
        if stream is None:
            if self.call is not None:
                self._body += chunk  # a whole body, read at its end
            return None
        out = stream.feed(chunk)
        if end:
            out += stream.finish()
        return None if out is chunk else out

    def _start_stream(self, streamed: bool) -> bool:
        call = self.call
        if call is None or not (streamed or call.streaming):
            return False
        stream = apis.reader(call).stream(call, hide_usage_chunk=self.hide_usage_chunk)
        if self.content_encoding and self.content_encoding != "identity":
            stream = DecodedStream(stream, self.content_encoding)
        self._stream = stream
        return True

    def reading(self) -> Reading:
        """What was read so far: at the end of the response, or where it was cut."""
        usage, model, problem = self._usage()
        return Reading(usage, model, problem, self.status, self.body_bytes, self._stream is not None)

    def _usage(self) -> tuple[Usage | None, str | None, str | None]:
        if self._stream is not None:
            stream = self._stream
            return (
                stream.usage,
                stream.model,
                None if stream.usage is not None else "stream ended without usage",
            )
        if self.call is None:
            return None, None, None
        if not self._body:
            return None, None, "empty response body" if self.status else None
        body = bytes(self._body)
        self._body.clear()
        if self.content_encoding and self.content_encoding != "identity":
            body, decode_problem = decode_body(body, self.content_encoding)
            if decode_problem:
                return None, None, decode_problem
        parsed = apis.reader(self.call).parse_response(body, self.call)
        return parsed.usage, parsed.model, parsed.problem
