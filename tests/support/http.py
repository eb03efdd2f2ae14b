"""A mock OpenAI upstream and a small HTTP/1.1 client, both on asyncio streams.

Used by the e2e tests, `make demo` and the load benchmark. The mock behaves like
OpenAI's chat completions where it matters to us: usage in buffered responses, SSE
chunks when `stream` is true, and the usage chunk (with empty `choices`) only when
`stream_options.include_usage` is true. Tests script the usage per request with the
`x-mock-usage: PROMPT,COMPLETION` header and read `/__mock/stats` to see what arrived.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from dataclasses import dataclass, field
from typing import Any


@dataclass
class MockStats:
    requests: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(length) if length else b""


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


class MockOpenAI:
    """`await start()` then point Envoy at `.port`."""

    def __init__(self) -> None:
        self.stats = MockStats()
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._conn, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server:
            self._server.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line, headers = await _read_head(reader)
                body = await _read_body(reader, headers)
                await self._respond(request_line, headers, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _respond(
        self, request_line: str, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        method, path = request_line.split(" ")[:2]
        if path.startswith("/__mock/stats"):
            payload = json.dumps({"requests": self.stats.requests, "paths": self.stats.paths}).encode()
            _write(writer, 200, {"content-type": "application/json"}, payload)
            return
        self.stats.requests += 1
        self.stats.paths.append(path)
        self.stats.headers.append(headers)
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            _write(writer, 400, {"content-type": "application/json"}, b'{"error":{"message":"bad json"}}')
            return
        self.stats.bodies.append(req)
        other = _other_api(path, req, headers)
        if other is not None:
            ctype, payload, streamed = other
            await _send(writer, ctype, payload, streamed, _coding(headers))
            return
        if headers.get("x-mock-malformed"):
            _write(writer, 200, {"content-type": "application/json"}, b'{"id":"x","usage":{"prompt_tok')
            return
        if headers.get("x-mock-no-usage"):
            _write(writer, 200, {"content-type": "application/json"}, b'{"id":"x","choices":[]}')
            return
        if not path.endswith("/chat/completions") or method != "POST":
            _write(writer, 200, {"content-type": "application/json"}, b'{"object":"list","data":[]}')
            return
        prompt, completion = _usage_for(req, headers)
        model = headers.get("x-mock-model") or _response_model(req.get("model", "gpt-4o"))
        created = int(time.time())
        if req.get("stream"):
            delay = int(headers.get("x-mock-delay-ms", "0")) / 1000
            await _stream(writer, req, model, created, prompt, completion, delay)
            return
        payload = {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "A token budget caps spend."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
        _write(writer, 200, {"content-type": "application/json"}, json.dumps(payload).encode())


def _other_api(path: str, req: dict[str, Any], headers: dict[str, str]) -> tuple[str, bytes, bool] | None:
    """Every API but chat completions, from the fixture builders: (content type, body, streamed)."""
    from tests.support import fixtures_anthropic, fixtures_bedrock, fixtures_gemini, fixtures_openai

    bare, _, query = path.partition("?")
    p, c = (int(x) for x in headers.get("x-mock-usage", "10,20").split(","))
    if bare.endswith("/v1/messages"):
        model = req.get("model", "claude-sonnet-4-5")
        if req.get("stream"):
            return fixtures_anthropic.STREAM_CONTENT_TYPE, fixtures_anthropic.stream_body(model, p, c), True
        return fixtures_anthropic.CONTENT_TYPE, fixtures_anthropic.response_body(model, p, c), False
    if ":generateContent" in bare or ":streamGenerateContent" in bare:
        model = bare.rsplit("/models/", 1)[1].split(":")[0]
        if ":streamGenerateContent" in bare:
            sse = "alt=sse" in query
            ctype = fixtures_gemini.SSE_CONTENT_TYPE if sse else fixtures_gemini.ARRAY_STREAM_CONTENT_TYPE
            return ctype, fixtures_gemini.stream_body(model, p, c, sse=sse), True
        return fixtures_gemini.CONTENT_TYPE, fixtures_gemini.response_body(model, p, c), False
    if "/model/" in bare and bare.endswith(("/converse", "/converse-stream")):
        if bare.endswith("/converse-stream"):
            return fixtures_bedrock.STREAM_CONTENT_TYPE, fixtures_bedrock.stream_body(p, c), True
        return fixtures_bedrock.CONTENT_TYPE, fixtures_bedrock.response_body(p, c), False
    model = req.get("model", "gpt-4o")
    if bare.endswith("/responses"):
        if req.get("stream"):
            return fixtures_openai.SSE_CONTENT_TYPE, fixtures_openai.responses_stream(model, p, c), True
        return fixtures_openai.JSON_CONTENT_TYPE, fixtures_openai.responses_response(model, p, c), False
    if bare.endswith("/embeddings"):
        return fixtures_openai.JSON_CONTENT_TYPE, fixtures_openai.embeddings_response(model, p), False
    if bare.endswith("/completions") and not bare.endswith("/chat/completions"):
        if req.get("stream"):
            include = bool((req.get("stream_options") or {}).get("include_usage"))
            body = fixtures_openai.completions_stream(model, p, c, include_usage=include)
            return fixtures_openai.SSE_CONTENT_TYPE, body, True
        return fixtures_openai.JSON_CONTENT_TYPE, fixtures_openai.completions_response(model, p, c), False
    if bare.endswith("/chat/completions") and headers.get("x-mock-encoding"):
        include = bool((req.get("stream_options") or {}).get("include_usage"))
        if req.get("stream"):
            body = fixtures_openai.chat_stream(model, p, c, include_usage=include)
            return fixtures_openai.SSE_CONTENT_TYPE, body, True
        return fixtures_openai.JSON_CONTENT_TYPE, fixtures_openai.chat_response(model, p, c), False
    return None


def _coding(headers: dict[str, str]) -> str:
    """`x-mock-encoding`'s coding, used as a real upstream would: only when the request's
    accept-encoding offers it (the sidecar rewrites that header)."""
    wanted = headers.get("x-mock-encoding", "")
    offered = {
        part.split(";", 1)[0].strip().lower() for part in headers.get("accept-encoding", "").split(",")
    }
    return wanted if wanted in offered else ""


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    if encoding == "br":
        import brotli

        return bytes(brotli.compress(data))
    return data


async def _send(writer: asyncio.StreamWriter, ctype: str, body: bytes, streamed: bool, encoding: str) -> None:
    headers = {"content-type": ctype}
    if encoding:
        body = compress(body, encoding)
        headers["content-encoding"] = encoding
    if not streamed:
        _write(writer, 200, headers, body)
        return
    head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    writer.write(head.encode() + b"\r\n")
    for i in range(0, len(body), 37):  # cut at awkward places, as real upstreams do
        part = body[i : i + 37]
        writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _response_model(model: str) -> str:
    return {"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini-2024-07-18"}.get(model, model)


def _usage_for(req: dict[str, Any], headers: dict[str, str]) -> tuple[int, int]:
    scripted = headers.get("x-mock-usage")
    if scripted:
        p, c = scripted.split(",")
        return int(p), int(c)
    text = " ".join(str(m.get("content", "")) for m in req.get("messages", []) if isinstance(m, dict))
    return max(1, len(text) // 4), int(req.get("max_tokens") or 16)


def _write(writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes) -> None:
    head = f"HTTP/1.1 {status} OK\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(head.encode() + b"\r\n" + body)


async def _stream(
    writer: asyncio.StreamWriter,
    req: dict[str, Any],
    model: str,
    created: int,
    prompt: int,
    completion: int,
    delay: float = 0.0,
) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    words = ["A ", "token ", "budget ", "caps ", "spend."]
    events = []
    for i, w in enumerate(words):
        delta: dict[str, Any] = {"content": w} if i else {"role": "assistant", "content": w}
        chunk = {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    if (req.get("stream_options") or {}).get("include_usage"):
        usage_chunk = {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
        events.append(b"data: " + json.dumps(usage_chunk).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    # Split events across writes at awkward places, as real upstreams and Envoy do.
    data = b"".join(events)
    step = 37
    for i in range(0, len(data), step):
        part = data[i : i + step]
        writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        await writer.drain()
        await asyncio.sleep(delay)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpClient:
    """One keep-alive HTTP/1.1 connection; enough for tests and the load benchmark."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None and self._writer is not None
        hdrs = {"host": f"{self.host}:{self.port}", "content-length": str(len(body))}
        if body:
            hdrs["content-type"] = "application/json"
        hdrs.update(headers or {})
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        self._writer.write(head.encode() + b"\r\n" + body)
        await self._writer.drain()
        status_line, resp_headers = await _read_head(self._reader)
        status = int(status_line.split(" ")[1])
        if method == "HEAD" or status in (204, 304):
            data = b""
        elif "content-length" in resp_headers or "chunked" in resp_headers.get("transfer-encoding", ""):
            data = await _read_body(self._reader, resp_headers)
        else:
            data = await self._reader.read()
            self._writer.close()
        if resp_headers.get("connection", "").lower() == "close":
            self._writer.close()
        return Response(status, resp_headers, data)

    async def post_json(
        self, path: str, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Response:
        return await self.request("POST", path, json.dumps(payload).encode(), headers)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


async def _serve_forever(port: int) -> None:
    mock = MockOpenAI()
    await mock.start(port)
    print(f"mock OpenAI upstream on 127.0.0.1:{mock.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import sys

    asyncio.run(_serve_forever(int(sys.argv[1]) if len(sys.argv) > 1 else 8081))
