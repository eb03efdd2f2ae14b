"""An OpenAI-style SSE upstream for bench.stream_compare: N chat chunks GAP ms apart per
response, then the usage chunk when the request asked for it (the sidecar injects that).

    python -m bench.sse_upstream PORT N GAP_MS
"""

from __future__ import annotations

import asyncio
import json
import sys


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def serve(port: int, chunks: int, gap: float) -> None:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = json.loads(await reader.readexactly(length) or b"{}")
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            for i in range(chunks):
                delta = {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
                ev = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "model": "gpt-4o-2024-08-06",
                    "choices": [delta],
                }
                writer.write(_chunk(_event(ev)))
                await writer.drain()
                await asyncio.sleep(gap)
            tail = b""
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
                tail += _event(
                    {
                        "id": "c",
                        "object": "chat.completion.chunk",
                        "model": "gpt-4o-2024-08-06",
                        "choices": [],
                        "usage": usage,
                    }
                )
            writer.write(_chunk(tail + b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(respond, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000))
