"""CPU cost of one admitted-and-recorded exchange inside the sidecar, without gRPC or Envoy.

    .venv/bin/python -m bench.exchange [--profile]

Drives `BudgetService.handle` with real wire messages (request headers and body, response
headers and body) against the in-memory store, on bench/budgets.yaml (a per-user USD
entry and a global token entry). Prints microseconds per exchange; `--profile` prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import time

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.admission import Snapshot
from extproc.config import load_config
from extproc.envoy.service import BudgetService, Exchange
from extproc.store import MemoryStore
from extproc.telemetry import Metrics, configure_logging
from tests.support.procs import ROOT


def _headers(kind: str, headers: dict[str, str], route: str | None = None) -> pb.ProcessingRequest:
    hm = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )
    msg = pb.ProcessingRequest(**{kind: pb.HttpHeaders(headers=hm)})
    if route:
        msg.attributes["envoy.filters.http.ext_proc"].update({"xds.route_name": route})
    return msg


REQUEST_HEADERS = _headers(
    "request_headers",
    {
        ":method": "POST",
        ":path": "/v1/chat/completions",
        "content-type": "application/json",
        "x-user": "alice",
    },
    "budget-demo",
)
REQUEST_BODY = pb.ProcessingRequest(
    request_body=pb.HttpBody(
        body=json.dumps(
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "Say hi in five words."}],
                "max_tokens": 20,
            }
        ).encode(),
        end_of_stream=True,
    )
)
RESPONSE_HEADERS = _headers("response_headers", {":status": "200", "content-type": "application/json"})
RESPONSE_BODY = pb.ProcessingRequest(
    response_body=pb.HttpBody(
        body=json.dumps(
            {
                "id": "x",
                "model": "gpt-4o-2024-08-06",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "Hi there, nice to meet."}}
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
            }
        ).encode(),
        end_of_stream=True,
    )
)


async def run(n: int) -> float:
    config = load_config([ROOT / "bench" / "budgets.yaml"])
    service = BudgetService(Snapshot(config), MemoryStore(), Metrics())
    t0 = time.perf_counter()
    for _ in range(n):
        ex = Exchange()
        for msg in (REQUEST_HEADERS, REQUEST_BODY, RESPONSE_HEADERS, RESPONSE_BODY):
            await service.handle(ex, msg)
        await service.close(ex)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    configure_logging("warning")  # the per-request info line is measured separately below
    asyncio.run(run(200))  # warm caches
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        us = asyncio.run(run(args.n))
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    else:
        us = asyncio.run(run(args.n))
    print(f"exchange without the info log line: {us:.1f} µs")
    configure_logging("info")
    import contextlib
    import io
    import sys

    with contextlib.redirect_stdout(io.StringIO()):
        sys.stdout = io.StringIO()
        us_logged = asyncio.run(run(args.n))
        sys.stdout = sys.__stdout__
    print(f"exchange with the info log line:    {us_logged:.1f} µs")


if __name__ == "__main__":
    main()
