"""Side by side in one run, one Envoy, one machine: plain Envoy, Envoy + a no-op Python
ext_proc (the floor: it answers every message Envoy sends), and Envoy + the sidecar with
spend in memory and in Redis. Envoy answers with direct responses that carry OpenAI usage,
so no upstream competes for the cores. wrk drives each at 1 and 16 connections.

    make bench-compare          # or: .venv/bin/python -m bench.compare --seconds 8

Prints req/s, p50 and p99 per path, the sidecar's ratios to the floor, the p50 it adds
over plain Envoy, and the CPU each ext_proc process tree spent per request (what sizes it:
a core serves about 1,000,000 / that many requests a second). Absolute figures vary by
machine and by minute (everything shares the
cores); the ratios of one run are what to read. Needs wrk (Debian's `wrk`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.procs import Proc, Sidecar, envoy_binary, wait_for
from tests.support.redis_server import free_port, start_redis

BUDGETS = """\
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {name: bench, namespace: bench}
spec:
  budgets:
  - {name: per-user-usd, subject: {user: "*"}, limit: {unit: USD, amount: 1000000}, window: {unit: Day},
     onBudgetExceeded: Block}
  - {name: all-tokens, limit: {unit: Tokens, amount: 4000000000}, window: {unit: Month},
     onBudgetExceeded: Block}
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetPolicy
metadata: {name: bench, namespace: bench}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: budget-demo}]
  discovery: {from: Same}
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetDimensions
metadata: {name: dims}
spec:
  dimensions:
    user: {header: x-user}
"""
CATALOG = {"providers": {"openai": {"models": {"gpt-4o": {"rates": {"input": "2.50", "output": "10.00"}}}}}}
RESPONSE = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [],
        "usage": {"prompt_tokens": 17, "completion_tokens": 39, "total_tokens": 56},
    }
)
PROMPT = "In one sentence, what is a token budget?"
WRK_SCRIPT = f"""\
wrk.method = "POST"
wrk.body = '{{"model":"gpt-4o","messages":[{{"role":"user","content":"{PROMPT}"}}],"max_tokens":60}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-user"] = "alice"
"""
PATHS = ("plain", "floor", "memory", "redis")
_TYPES = "type.googleapis.com/"


def _listener(name: str, port: int, ext_proc_cluster: str | None) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    if ext_proc_cluster:
        filters.append(
            {
                "name": "envoy.filters.http.ext_proc",
                "typed_config": {
                    "@type": f"{_TYPES}envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                    "grpc_service": {"envoy_grpc": {"cluster_name": ext_proc_cluster}, "timeout": "5s"},
                    "message_timeout": "2s",
                    "request_attributes": ["xds.route_name"],
                    "processing_mode": {
                        "request_header_mode": "SEND",
                        "request_body_mode": "BUFFERED",
                        "response_header_mode": "SEND",
                        "response_body_mode": "BUFFERED",
                    },
                    "allow_mode_override": True,
                },
            }
        )
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }
    )
    route = {
        "name": "budget-demo",
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": RESPONSE}},
    }
    manager = {
        "@type": f"{_TYPES}envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": filters,
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


def envoy_config(admin_port: int, listen: dict[str, int], ext_proc: dict[str, int]) -> dict[str, Any]:
    """One listener per path; each but plain has the filter, pointed at its own cluster."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [_listener(n, p, n if n in ext_proc else None) for n, p in listen.items()],
            "clusters": [_cluster(n, p) for n, p in ext_proc.items()],
        },
    }


_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    cpu_us_per_request: float = 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (a sidecar's workers) so far."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(f) for f in fields[11:13]) / _TICKS
    tree, total = {pid}, 0.0
    for child, parent in sorted(parents.items()):
        if parent in tree:
            tree.add(child)
    for member in tree:
        total += times.get(member, 0.0)
    return total


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(wrk_path: str, script: Path, port: int, connections: int, seconds: float) -> Run:
    out = subprocess.run(
        [wrk_path, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script), "--latency",
         f"http://127.0.0.1:{port}/v1/chat/completions"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", out, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = re.search(r"(\d+) requests in", out)
    return Run(
        rps,
        _ms(latency["50"]),
        _ms(latency["99"]),
        int(errors.group(1)) if errors else 0,
        int(requests.group(1)) if requests else 0,
    )


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_envoy(config: dict[str, Any], admin_port: int, work: Path) -> Proc:
    """One Envoy (`--concurrency 1`) on `config`, started and ready."""
    path = work / "envoy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        envoy_binary(),
        "-c",
        str(path),
        "--concurrency",
        "1",
        "-l",
        "error",
        "--base-id",
        str(free_port()),
    ]
    envoy = Proc("envoy", argv)
    try:
        wait_for(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1).status == 200,
            "envoy",
            proc=envoy,
        )
    except BaseException:
        envoy.stop()
        raise
    return envoy


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--workers", type=int, default=1, help="sidecar processes for the Redis path")
    args = ap.parse_args()
    wrk_path = shutil.which("wrk")
    if wrk_path is None:
        print("bench.compare needs wrk (Debian's wrk; `make bench` installs it)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    (work / "budgets.yaml").write_text(BUDGETS)
    (work / "catalog.json").write_text(json.dumps(CATALOG))
    (work / "post.lua").write_text(WRK_SCRIPT)
    procs: list[Proc] = []
    redis = start_redis()
    try:
        floor_port = free_port()
        floor = Proc("floor", [sys.executable, "-m", "bench.noop_extproc", str(floor_port)])
        procs.append(floor)
        wait_for(lambda: _listening(floor_port), "the floor", proc=floor)
        extra = ["--catalog", str(work / "catalog.json"), "--log-level", "warning"]
        memory = Sidecar([str(work / "budgets.yaml")], extra=extra)
        procs.append(memory)
        with_redis = Sidecar(
            [str(work / "budgets.yaml")], redis_url=redis.url, extra=[*extra, "--workers", str(args.workers)]
        )
        procs.append(with_redis)
        listen = {name: free_port() for name in PATHS}
        ext_proc = {"floor": floor_port, "memory": memory.grpc_port, "redis": with_redis.grpc_port}
        admin = free_port()
        procs.append(start_envoy(envoy_config(admin, listen, ext_proc), admin, work))
        results: dict[tuple[int, str], Run] = {}
        pids = {"floor": floor.popen.pid, "memory": memory.popen.pid, "redis": with_redis.popen.pid}
        for connections in args.connections:
            for name in PATHS:
                wrk(wrk_path, work / "post.lua", listen[name], connections, 1)  # warm up
                before = cpu_seconds(pids[name]) if name in pids else 0.0
                run = wrk(wrk_path, work / "post.lua", listen[name], connections, args.seconds)
                if name in pids and run.requests:
                    spent = cpu_seconds(pids[name]) - before
                    run = dataclasses.replace(run, cpu_us_per_request=spent / run.requests * 1e6)
                results[(connections, name)] = run
        print(
            f"{args.seconds:.0f} s per run, Envoy --concurrency 1,"
            f" sidecar workers (Redis path): {args.workers}"
        )
        print(
            f"{'':<5} {'path':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU µs/req':>11}"
        )
        for (connections, name), run in results.items():
            cpu = f"{run.cpu_us_per_request:>11.0f}" if run.cpu_us_per_request else f"{'':>11}"
            print(
                f"c{connections:<4} {name:<8} {run.rps:>9.0f} {run.p50_ms:>8.2f}"
                f" {run.p99_ms:>8.2f} {run.errors:>7} {cpu}"
            )
        for connections in args.connections:
            floor_rps = results[(connections, "floor")].rps
            plain = results[(connections, "plain")]
            ratios = ", ".join(
                f"{n} {results[(connections, n)].rps / floor_rps:.2f}x" for n in ("memory", "redis")
            )
            added = ", ".join(
                f"{n} +{results[(connections, n)].p50_ms - plain.p50_ms:.2f} ms p50, "
                f"+{results[(connections, n)].p99_ms - plain.p99_ms:.2f} ms p99"
                for n in ("memory", "redis")
            )
            print(f"c{connections}: req/s vs the floor: {ratios}; over plain Envoy: {added}")
        return 0 if all(run.errors == 0 for run in results.values()) else 1
    finally:
        for proc in reversed(procs):
            proc.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
