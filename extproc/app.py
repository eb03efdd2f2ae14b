"""Serving: configuration in, a running sidecar out (gRPC ext_proc plus the admin port)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from extproc.config import load_config
from extproc.server.admin import AdminServer
from extproc.server.grpc import build_server, mark_serving
from extproc.service import BudgetService, Settings, Snapshot
from extproc.store import open_store
from extproc.telemetry import Metrics, configure_logging, log


@dataclass(frozen=True)
class ServeOptions:
    config_paths: Sequence[str]
    catalog_files: Sequence[str] = ()
    redis_url: str | None = None
    grpc_address: str = "0.0.0.0:50051"
    admin_address: str = "0.0.0.0:9090"
    workers: int = 1
    store_timeout_ms: int = 50
    log_level: str = "info"
    settings: Settings = field(default_factory=Settings)


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


async def serve(opts: ServeOptions, *, stop: asyncio.Event | None = None) -> None:
    """Run one sidecar process until `stop` is set or SIGTERM/SIGINT arrives."""
    config = load_config(opts.config_paths, opts.catalog_files)
    snapshot = Snapshot(config)
    providers, models = snapshot.catalog.summary
    log.info("loaded model catalog", providers=providers, models=models, builtin="genai-prices")
    entries = sum(len(b.entries) for b in config.budgets)
    log.info(
        "loaded configuration",
        sources=len(config.sources),
        budgets=len(config.budgets),
        entries=entries,
        policies=len(config.policies),
    )
    # The store raises when Redis is unreachable; each route's policy (failureMode)
    # decides what admission does then. Spend recorded meanwhile is kept and replayed.
    store = open_store(opts.redis_url, fail_open=False, timeout_seconds=opts.store_timeout_ms / 1000)
    metrics = Metrics()
    service = BudgetService(snapshot, store, metrics, opts.settings)
    server, port, health_servicer = build_server(service, opts.grpc_address, reuse_port=opts.workers > 1)

    async def ready() -> tuple[bool, str]:
        try:
            ok = await store.ping()
        except Exception as exc:
            return False, f"spend store: {exc}"
        return ok, "ready" if ok else "spend store not reachable"

    admin = AdminServer(metrics.registry, ready)
    admin_host, admin_port = _split_address(opts.admin_address)
    bound_admin = await admin.start(admin_host, admin_port)
    await server.start()
    await mark_serving(health_servicer, True)
    log.info(
        "serving",
        grpc_port=port,
        admin_port=bound_admin,
        store="redis" if opts.redis_url else "memory",
        pid=os.getpid(),
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await mark_serving(health_servicer, False)
    await server.stop(grace=5)
    await admin.stop()
    await store.close()


def run(opts: ServeOptions) -> int:
    """Serve in this process, or pre-fork `workers` processes sharing the port."""
    configure_logging(opts.log_level)
    if opts.workers > 1 and not opts.redis_url:
        log.error("several workers need a shared spend store: set --redis-url")
        return 2
    for p in opts.config_paths:
        if not Path(p).exists():
            log.error("config path does not exist", path=p)
            return 2
    if opts.workers <= 1:
        asyncio.run(serve(opts))
        return 0
    # Fork before any gRPC object exists: one event loop per process, same port.
    children = []
    for _ in range(opts.workers):
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(opts))
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(ServeOptions(config_paths=sys.argv[1:] or ["examples/"])))
