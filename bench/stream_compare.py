"""Streamed responses side by side in one run: plain Envoy, the floor (a no-op Python
ext_proc taking every response chunk as a blocking message) and the sidecar with Redis.

    make bench-stream          # or: .venv/bin/python -m bench.stream_compare --seconds 8

An SSE upstream (its own process) sends N chat chunks GAP ms apart per response; K clients
stream concurrently through one Envoy. Prints, per path, the added delay per chunk (the
arrival gap minus GAP, p50 and p99), the time to the last byte, and the CPU each process
spent per chunk delivered (from /proc: the ext_proc process and Envoy). A port of
`../shared/bench/stream_compare.py` onto bench.compare's Envoy config and free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.compare import BUDGETS, CATALOG, _listening, cpu_seconds, envoy_config, start_envoy
from tests.support.procs import Proc, Sidecar, wait_for
from tests.support.redis_server import free_port, start_redis

PATHS = ("plain", "floor", "redis")


@dataclass(frozen=True)
class StreamRun:
    streams: int
    chunks: int
    gap_p50_ms: float
    gap_p99_ms: float
    last_byte_p50_ms: float
    ext_proc_cpu_us_per_chunk: float
    envoy_cpu_us_per_chunk: float


async def _client(
    port: int, gap: float, chunks: int, gaps: list[float], totals: list[float], deadline: float
) -> None:
    body = json.dumps(
        {
            "model": "gpt-4o",
            "stream": True,
            "max_tokens": chunks,
            "messages": [{"role": "user", "content": "go"}],
        }
    ).encode()
    while time.perf_counter() < deadline:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"x-user: alice\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        t0 = time.perf_counter()
        last: float | None = None
        await reader.readuntil(b"\r\n\r\n")
        while data := await reader.read(65536):
            now = time.perf_counter()
            if last is not None and b"chat.completion.chunk" in data:
                gaps.append(now - last - gap)
            last = now
        totals.append(time.perf_counter() - t0)
        writer.close()


async def drive(
    port: int, clients: int, gap: float, chunks: int, seconds: float
) -> tuple[list[float], list[float]]:
    gaps: list[float] = []
    totals: list[float] = []
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(_client(port, gap, chunks, gaps, totals, deadline) for _ in range(clients)))
    return sorted(gaps), sorted(totals)


def _streaming_config(
    admin: int, listen: dict[str, int], ext_proc: dict[str, int], upstream: int
) -> dict[str, Any]:
    """bench.compare's listeners routed to the SSE upstream; the floor streams the body."""
    config = envoy_config(admin, listen, ext_proc)
    resources = config["static_resources"]
    for listener in resources["listeners"]:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        route = manager["route_config"]["virtual_hosts"][0]["routes"][0]
        del route["direct_response"]
        route["route"] = {"cluster": "llm", "timeout": "60s"}
        for http_filter in manager["http_filters"]:
            if http_filter["name"] == "envoy.filters.http.ext_proc" and listener["name"] == "floor":
                http_filter["typed_config"]["processing_mode"]["response_body_mode"] = "STREAMED"
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}
    resources["clusters"].append(
        {
            "name": "llm",
            "type": "STATIC",
            "load_assignment": {"cluster_name": "llm", "endpoints": [{"lb_endpoints": [endpoint]}]},
        }
    )
    return config


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--chunks", type=int, default=50)
    ap.add_argument("--gap-ms", type=float, default=10)
    args = ap.parse_args()
    gap = args.gap_ms / 1000
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    (work / "budgets.yaml").write_text(BUDGETS)
    (work / "catalog.json").write_text(json.dumps(CATALOG))
    procs: list[Proc] = []
    redis = start_redis()
    try:
        up_port, floor_port = free_port(), free_port()
        upstream = Proc(
            "upstream",
            [sys.executable, "-m", "bench.sse_upstream", str(up_port), str(args.chunks), str(args.gap_ms)],
        )
        floor = Proc("floor", [sys.executable, "-m", "bench.noop_extproc", str(floor_port)])
        procs += [upstream, floor]
        wait_for(lambda: _listening(up_port) and _listening(floor_port), "the upstream and the floor")
        extra = ["--catalog", str(work / "catalog.json"), "--log-level", "warning"]
        sidecar = Sidecar([str(work / "budgets.yaml")], redis_url=redis.url, extra=extra)
        procs.append(sidecar)
        listen = {name: free_port() for name in PATHS}
        admin = free_port()
        ext_procs = {"floor": floor_port, "redis": sidecar.grpc_port}
        envoy = start_envoy(_streaming_config(admin, listen, ext_procs, up_port), admin, work)
        procs.append(envoy)
        ext_proc_pid = {"floor": floor.popen.pid, "redis": sidecar.popen.pid}
        results: dict[str, StreamRun] = {}
        for name in PATHS:
            asyncio.run(drive(listen[name], 4, gap, args.chunks, 1))  # warm up
            before = {pid: cpu_seconds(pid) for pid in (envoy.popen.pid, *ext_proc_pid.values())}
            gaps, totals = asyncio.run(drive(listen[name], args.clients, gap, args.chunks, args.seconds))
            after = {pid: cpu_seconds(pid) for pid in before}
            chunks = max(len(gaps), 1)
            pid = ext_proc_pid.get(name)
            results[name] = StreamRun(
                streams=len(totals),
                chunks=len(gaps),
                gap_p50_ms=statistics.median(gaps) * 1e3 if gaps else float("nan"),
                gap_p99_ms=gaps[int(len(gaps) * 0.99)] * 1e3 if gaps else float("nan"),
                last_byte_p50_ms=statistics.median(totals) * 1e3 if totals else float("nan"),
                ext_proc_cpu_us_per_chunk=(after[pid] - before[pid]) / chunks * 1e6 if pid else 0.0,
                envoy_cpu_us_per_chunk=(after[envoy.popen.pid] - before[envoy.popen.pid]) / chunks * 1e6,
            )
        ideal = args.chunks * args.gap_ms
        print(
            f"{args.clients} clients, {args.chunks} SSE chunks {args.gap_ms:g} ms apart,"
            f" {args.seconds:.0f} s per path, Envoy --concurrency 1, spend in Redis"
            f" (ideal last byte {ideal:.0f} ms)"
        )
        print(
            f"{'path':<7} {'streams':>7} {'chunks':>7} {'+p50 ms':>8} {'+p99 ms':>8} {'last p50':>9}"
            f" {'ext_proc µs/chunk':>18} {'envoy µs/chunk':>15}"
        )
        for name, run in results.items():
            print(
                f"{name:<7} {run.streams:>7} {run.chunks:>7} {run.gap_p50_ms:>8.2f} {run.gap_p99_ms:>8.2f}"
                f" {run.last_byte_p50_ms:>9.1f} {run.ext_proc_cpu_us_per_chunk:>18.1f}"
                f" {run.envoy_cpu_us_per_chunk:>15.1f}"
            )
        floor_run, ours = results["floor"], results["redis"]
        cpu_ratio = ours.ext_proc_cpu_us_per_chunk / max(floor_run.ext_proc_cpu_us_per_chunk, 1e-9)
        print(
            f"the sidecar vs the floor: added p99 per chunk {ours.gap_p99_ms - floor_run.gap_p99_ms:+.2f} ms,"
            f" CPU per chunk {cpu_ratio:.2f}x"
        )
        return 0
    finally:
        for proc in reversed(procs):
            proc.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
