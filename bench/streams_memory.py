"""The sidecar's memory: idle, and with N ext_proc streams open at once, each admitted and
waiting for its response (an LLM stream in flight), as Envoy would hold them.

    .venv/bin/python -m bench.streams_memory [--streams 5000]

Starts one sidecar (files mode, spend in memory), opens the streams over gRPC channels of
1,000 streams each (HTTP/2 multiplexes them, as Envoy's connections do), sends each its
request headers and body, waits for both replies, and reads the sidecar's VmRSS from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg

from tests.support.procs import ROOT, Sidecar


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _messages(user: str) -> list[pb.ProcessingRequest]:
    headers = base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=k, raw_value=v.encode())
            for k, v in {":method": "POST", ":path": "/v1/chat/completions", "x-user": user}.items()
        ]
    )
    first = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=headers))
    first.attributes["envoy.filters.http.ext_proc"].update({"xds.route_name": "budget-demo"})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    second = pb.ProcessingRequest(
        request_body=pb.HttpBody(body=json.dumps(body).encode(), end_of_stream=True)
    )
    return [first, second]


async def _hold(
    stub: pbg.ExternalProcessorStub, user: str, admitted: asyncio.Event, done: asyncio.Event
) -> bool:
    """One stream admitted and left open until `done`; False if it failed."""

    async def requests() -> AsyncIterator[pb.ProcessingRequest]:
        for message in _messages(user):
            yield message
        await done.wait()  # the response has not come yet

    call = stub.Process(requests())
    try:
        replies = 0
        async for _ in call:
            replies += 1
            if replies == 2:
                break
        return replies == 2
    except grpc.aio.AioRpcError as exc:
        FAILURES.append(f"{exc.code().name}: {exc.details()}")
        return False
    finally:
        admitted.set()
        await done.wait()
        call.cancel()


FAILURES: list[str] = []
PER_CHANNEL = 1000  # streams per HTTP/2 connection, as several Envoy workers spread them


async def measure(port: int, pid: int, streams: int) -> tuple[float, float, int]:
    idle = _rss_mb(pid)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(-(-streams // PER_CHANNEL))]
    stubs = [pbg.ExternalProcessorStub(c) for c in channels]  # type: ignore[no-untyped-call]
    try:
        done = asyncio.Event()
        admitted = [asyncio.Event() for _ in range(streams)]
        tasks = [
            asyncio.ensure_future(_hold(stubs[i // PER_CHANNEL], f"user-{i % 50}", admitted[i], done))
            for i in range(streams)
        ]
        await asyncio.wait_for(asyncio.gather(*(a.wait() for a in admitted)), 300)
        await asyncio.sleep(1.0)
        loaded = _rss_mb(pid)
        done.set()
        ok = sum(await asyncio.gather(*tasks))
    finally:
        for channel in channels:
            await channel.close()
    return idle, loaded, ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=5000)
    args = ap.parse_args()
    sidecar = Sidecar([str(ROOT / "bench" / "budgets.yaml")], extra=["--log-level", "warning"])
    try:
        idle, loaded, ok = asyncio.run(measure(sidecar.grpc_port, sidecar.popen.pid, args.streams))
    finally:
        sidecar.stop()
    per_stream = (loaded - idle) * 1024 / max(ok, 1)
    print(
        f"sidecar RSS idle {idle:.0f} MB; with {ok} of {args.streams} streams open and admitted"
        f" {loaded:.0f} MB ({per_stream:.1f} KB a stream)"
    )
    for failure in sorted(set(FAILURES)):
        print(f"  {FAILURES.count(failure)} failed: {failure}")
    return 0 if ok == args.streams else 1


if __name__ == "__main__":
    sys.exit(main())
