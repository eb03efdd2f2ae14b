"""Serving: configuration in, a running sidecar out (gRPC ext_proc plus the admin port)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from extproc.config import Config, Problem, load_config
from extproc.config.sources.file_watch import ConfigWatcher, fingerprint
from extproc.server.admin import AdminServer
from extproc.server.grpc import build_server, mark_serving
from extproc.service import BudgetService, Settings, Snapshot
from extproc.spend import spend_rows
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
    store_timeout_ms: int = 100
    log_level: str = "info"
    # Seconds between looks at the configuration files for changes; 0 turns reloading off.
    reload_interval: float = 1.0
    settings: Settings = field(default_factory=Settings)


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def _config_counts(config: Config) -> dict[str, int]:
    return {
        "sources": len(config.sources),
        "budgets": len(config.budgets),
        "entries": sum(len(b.entries) for b in config.budgets),
        "policies": len(config.policies),
    }


class LiveConfiguration:
    """Applies a reloaded configuration to the running service, or keeps the last good one.

    Applying is one attribute store on the event loop, so it lands between requests; an
    exchange already under way keeps the snapshot it began with (see `Exchange.snapshot`).
    Spend carries over: it is keyed by entry identity and subject, never by the limit.
    """

    def __init__(self, service: BudgetService, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics

    def apply(self, config: Config) -> None:
        # The catalog is rebuilt with the rest: its lookups are lazy, so this is cheap.
        self.service.snapshot = Snapshot(config)
        self.metrics.config_reloads.labels("applied").inc()
        log.info("configuration reloaded", **_config_counts(config))

    def reject(self, problems: list[Problem] | Exception) -> None:
        self.metrics.config_reloads.labels("rejected").inc()
        reasons = [str(p) for p in problems] if isinstance(problems, list) else [repr(problems)]
        log.error("configuration reload rejected; keeping the last good configuration", problems=reasons)


async def serve(opts: ServeOptions, *, stop: asyncio.Event | None = None) -> None:
    """Run one sidecar process until `stop` is set or SIGTERM/SIGINT arrives."""
    # Fingerprinted before loading, so an edit made while starting up is reloaded, not missed.
    loaded_from = fingerprint(opts.config_paths, opts.catalog_files) if opts.reload_interval > 0 else None
    config = load_config(opts.config_paths, opts.catalog_files)
    snapshot = Snapshot(config)
    providers, models = snapshot.catalog.summary
    log.info("loaded model catalog", providers=providers, models=models, builtin="genai-prices")
    log.info("loaded configuration", **_config_counts(config))
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

    async def spend_report() -> list[dict[str, str | int]]:
        # The running configuration and this sidecar's own store: in-memory spend included.
        rows = await spend_rows(service.snapshot.config, store, time.time())
        return [row.as_dict() for row in rows]

    admin = AdminServer(metrics.registry, ready, spend_report)
    admin_host, admin_port = _split_address(opts.admin_address)
    bound_admin = await admin.start(admin_host, admin_port)
    await server.start()
    await mark_serving(health_servicer, True)
    watcher: ConfigWatcher | None = None
    if loaded_from is not None:
        live = LiveConfiguration(service, metrics)
        watcher = ConfigWatcher(
            opts.config_paths,
            opts.catalog_files,
            live.apply,
            live.reject,
            opts.reload_interval,
            loaded_from=loaded_from,
        )
        watcher.start()
    log.info(
        "serving",
        grpc_port=port,
        admin_port=bound_admin,
        store="redis" if opts.redis_url else "memory",
        reload_interval=opts.reload_interval,
        pid=os.getpid(),
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    if watcher is not None:
        await watcher.stop()
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
