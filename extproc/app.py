"""Serving: configuration in, a running sidecar out (gRPC ext_proc plus the admin port)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from extproc.admin.service import BudgetAdmin
from extproc.admission import Settings, Snapshot
from extproc.budgets import reach
from extproc.config import Config, Problem, load_config
from extproc.config.sources.file_watch import ConfigWatcher, fingerprint
from extproc.config.sources.kubernetes.options import ClusterOptions
from extproc.envoy.service import BudgetService
from extproc.gauges import BudgetGauges
from extproc.notify import DEFAULT_THRESHOLDS, Notifier, Webhook
from extproc.server import page
from extproc.server.admin import AdminServer
from extproc.server.grpc import GrpcTls, build_server, mark_serving
from extproc.spend import spend_rows
from extproc.store import FailoverStore, RedisAccess, open_store
from extproc.telemetry import Metrics, StoreStats, configure_logging, log

if TYPE_CHECKING:
    from extproc.config.sources.kubernetes.cluster import Cluster


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
    # "files" (config_paths) or "kubernetes" (the cluster's resources, listed and watched).
    source: str = "files"
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    # Spend not yet confirmed by Redis, on disk (with --redis-url); None: in memory only.
    journal_dir: str | None = None
    journal_fsync: str = "everysec"
    journal_max_bytes: int = 256 * 1024 * 1024
    # TLS files and a password for --redis-url (see extproc.store.connect).
    redis_access: RedisAccess = field(default_factory=RedisAccess)
    # On SIGTERM: keep accepting new streams this long (endpoints propagating), then let
    # in-flight streams finish for up to drain_seconds (LLM streams run minutes).
    drain_delay_seconds: float = 5.0
    drain_seconds: float = 300.0
    # TLS (mTLS with a client CA) on the gRPC listener; None: plaintext (or a Unix socket).
    grpc_tls: GrpcTls | None = None
    # A bearer token that /spend (anything per subject) needs; None: open (bind the admin
    # address to localhost then). /metrics and health stay open for scraping and probes.
    admin_token: str | None = None
    # The admin API's AdjustSpend (credit or reset a counter): off unless asked for.
    admin_adjust: bool = False
    # The per-budget gauges: read from the store this often (0: not at all), this many
    # entry and subject pairs at most.
    budget_gauges_interval: float = 15.0
    budget_gauges_max_series: int = 1000
    # Threshold notifications: where to, and at which percentages of a limit.
    notify_webhooks: tuple[Webhook, ...] = ()
    notify_thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS


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


def warn_of_reach(config: Config, metrics: Metrics) -> None:
    """A warning line for each budget no policy discovers and each policy that discovers none."""
    found = reach(config)
    metrics.config_warnings.labels("undiscovered_budget").set(len(found.undiscovered))
    metrics.config_warnings.labels("idle_policy").set(len(found.idle))
    for warning in found.warnings():
        log.warning("configuration warning", warning=warning)


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
        warn_of_reach(config, self.metrics)

    def reject(self, problems: list[Problem] | Exception) -> None:
        self.metrics.config_reloads.labels("rejected").inc()
        reasons = [str(p) for p in problems] if isinstance(problems, list) else [repr(problems)]
        log.error("configuration reload rejected; keeping the last good configuration", problems=reasons)


class _Startup:
    """What the admin port can tell before the service exists (the Kubernetes source
    serves /readyz from the start, 503 until the first full list)."""

    def __init__(self) -> None:
        self.service: BudgetService | None = None
        self.store_ping: Callable[[], Awaitable[bool]] | None = None
        self.waiting = "starting"
        self.pending: Config | None = None
        self.live: LiveConfiguration | None = None
        self.gauges: BudgetGauges | None = None
        self.draining = False

    def apply(self, config: Config) -> None:
        """Configurations from the cluster: held until the service exists, then applied live."""
        if self.live is None:
            self.pending = config
        else:
            self.live.apply(config)

    async def ready(self) -> tuple[bool, str]:
        """Whether Envoy gets correct answers from this process now. Not whether Redis
        answers: failureMode decides what requests get then, and a replica pulled from
        the Service for a Redis blip would turn it into an outage of every route."""
        if self.draining:
            return False, "draining"
        if self.service is None:
            return False, self.waiting
        return True, "ready"

    async def store(self) -> tuple[bool, str]:
        """The spend store's own state, for /storez (and an alert), apart from readiness."""
        if self.store_ping is None:
            return False, self.waiting
        try:
            ok = await self.store_ping()
        except Exception as exc:
            return False, f"spend store: {exc}"
        return ok, "spend store reachable" if ok else "spend store not reachable"


async def _wait_for(event: asyncio.Event, stop: asyncio.Event) -> bool:
    """Waits for `event`; False when `stop` came first."""
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return event.is_set()


async def serve(opts: ServeOptions, *, stop: asyncio.Event | None = None) -> None:
    """Run one sidecar process until `stop` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    hurry = asyncio.Event()
    loop = asyncio.get_running_loop()

    def signalled() -> None:
        # The first signal drains; a second one hurries the drain.
        if stop.is_set():
            hurry.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, signalled)
    metrics = Metrics()
    startup = _Startup()

    async def spend_report() -> list[dict[str, str | int]]:
        # The running configuration and this sidecar's own store: in-memory spend included.
        if startup.service is None:
            return []
        rows = await spend_rows(startup.service.snapshot.config, startup.service.store, time.time())
        return [row.as_dict() for row in rows]

    async def spend_page(query: dict[str, str]) -> bytes:
        service = startup.service
        if service is None:
            return b"<!doctype html><p>starting</p>"
        gauges = startup.gauges
        exhaustion = {
            (r.labels[0], r.labels[2]): r.remaining / r.burn_per_second
            for r in (gauges.readings if gauges is not None else ())
            if r.burn_per_second > 0
        }
        return await page.render(
            service.snapshot.config,
            service.store,
            query,
            exhaustion=exhaustion,
            blocks=service.enforcer.recent_blocks,
        )

    admin = AdminServer(
        metrics.registry,
        startup.ready,
        spend_report,
        store=startup.store,
        token=opts.admin_token,
        page=spend_page,
    )
    admin_host, admin_port = _split_address(opts.admin_address)
    try:
        bound_admin = await admin.start(admin_host, admin_port, reuse_port=opts.workers > 1)
    except OSError as exc:
        log.error("cannot bind the admin address", address=opts.admin_address, error=exc.strerror or str(exc))
        raise SystemExit(2) from exc

    cluster: Cluster | None = None
    loaded_from = None
    if opts.source == "kubernetes":
        # Imported here: the client and its models weigh tens of MB a process.
        from extproc.config.sources.kubernetes.cluster import Cluster, api_client

        catalogs = load_config([], opts.catalog_files).catalogs
        cluster = Cluster(
            await api_client(opts.cluster.kubeconfig), opts.cluster, startup.apply, metrics.registry, catalogs
        )
        startup.waiting = "waiting for the first full list from the Kubernetes API"
        log.info(
            "listing resources from the Kubernetes API",
            admin_port=bound_admin,
            namespaces=list(opts.cluster.namespaces) or "all",
        )
        await cluster.start()
        if not await _wait_for(cluster.source.ready, stop):
            log.info("stopped before serving", waiting=startup.waiting)  # nothing admitted yet
            await cluster.stop()
            await admin.stop()
            return
        assert startup.pending is not None
        config = startup.pending
    else:
        # Fingerprinted before loading, so an edit made while starting up is reloaded, not missed.
        loaded_from = fingerprint(opts.config_paths, opts.catalog_files) if opts.reload_interval > 0 else None
        config = load_config(opts.config_paths, opts.catalog_files)
    snapshot = Snapshot(config)
    providers, models = snapshot.catalog.summary
    log.info("loaded model catalog", providers=providers, models=models, builtin="genai-prices")
    log.info("loaded configuration", source=opts.source, **_config_counts(config))
    warn_of_reach(config, metrics)
    # Each admission carries its route's failure mode: Open admits on this replica's view
    # while Redis is unreachable, Closed is refused. Spend recorded meanwhile is replayed.
    store = open_store(
        opts.redis_url,
        timeout_seconds=opts.store_timeout_ms / 1000,
        journal_dir=opts.journal_dir,
        journal_fsync=opts.journal_fsync,
        journal_max_bytes=opts.journal_max_bytes,
        access=opts.redis_access,
    )
    if isinstance(store, FailoverStore):
        metrics.registry.register(StoreStats(store))
    service = BudgetService(snapshot, store, metrics, opts.settings)
    try:
        server, port, health_servicer = build_server(
            service,
            opts.grpc_address,
            reuse_port=opts.workers > 1,
            tls=opts.grpc_tls,
            admin=BudgetAdmin(service, token=opts.admin_token, allow_adjust=opts.admin_adjust),
        )
    except (ssl.SSLError, OSError) as exc:
        log.error("cannot use the gRPC certificates", error=str(exc), files=_tls_files(opts.grpc_tls))
        await admin.stop()
        await store.close()
        raise SystemExit(2) from exc
    except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
        log.error("cannot bind the gRPC address", address=opts.grpc_address, error=str(exc))
        await admin.stop()
        await store.close()
        raise SystemExit(2) from exc
    live = LiveConfiguration(service, metrics)
    startup.live = live
    if startup.pending is not None and startup.pending is not config:
        live.apply(startup.pending)  # a change that arrived while the service was being built
    await server.start()
    startup.service, startup.store_ping = service, store.ping
    await mark_serving(health_servicer, True)
    notifier = None
    if opts.notify_webhooks:
        notifier = Notifier(
            store, opts.notify_webhooks, thresholds=opts.notify_thresholds, registry=metrics.registry
        )
        if opts.budget_gauges_interval <= 0:
            log.warning("threshold notifications need --budget-gauges-interval above 0; none will be sent")
    gauges = BudgetGauges(
        lambda: service.snapshot,
        store,
        interval=opts.budget_gauges_interval or 15.0,
        max_series=opts.budget_gauges_max_series,
        notifier=notifier,
    )
    metrics.registry.register(gauges)
    startup.gauges = gauges
    gauging = asyncio.ensure_future(gauges.run()) if opts.budget_gauges_interval > 0 else None
    watcher: ConfigWatcher | None = None
    if loaded_from is not None:
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
        source=opts.source,
        reload_interval=opts.reload_interval,
        pid=os.getpid(),
    )
    await stop.wait()
    drain_deadline = time.monotonic() + opts.drain_delay_seconds + opts.drain_seconds
    await _drain(opts, startup, server, health_servicer, metrics, hurry)
    if isinstance(store, FailoverStore) and store.pending_records:
        await _confirm_pending(store, drain_deadline, hurry, opts.journal_dir)
    if watcher is not None:
        await watcher.stop()
    if gauging is not None:
        gauging.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gauging
    if notifier is not None:
        await notifier.close()
    if cluster is not None:
        await cluster.stop()
    await admin.stop()
    await store.close()  # the journal fsynced and closed
    log.info("stopped")


def _tls_files(tls: GrpcTls | None) -> list[str]:
    return [f for f in (tls.cert_file, tls.key_file, tls.client_ca_file) if f] if tls else []


def _open_streams(metrics: Metrics) -> int:
    return int(metrics.registry.get_sample_value("extproc_active_streams") or 0)


async def _drain(
    opts: ServeOptions,
    startup: _Startup,
    server: grpc.aio.Server,
    health_servicer: object,
    metrics: Metrics,
    hurry: asyncio.Event,
) -> None:
    """SIGTERM: not ready and NOT_SERVING at once; new streams still taken for the delay
    (while endpoints propagate); then no new streams, and the open ones finish, their spend
    recorded, for up to drain_seconds. The deadline or a second SIGTERM (hurry) ends the
    rest: a stream cut before its usage arrived is charged an estimate (logged each)."""
    startup.draining = True
    await mark_serving(health_servicer, False)  # type: ignore[arg-type]
    open_streams = _open_streams(metrics)
    log.info(
        "draining",
        open_streams=open_streams,
        delay_seconds=opts.drain_delay_seconds,
        drain_seconds=opts.drain_seconds,
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(hurry.wait(), opts.drain_delay_seconds)
    # No new streams from here; the open ones finish, until the deadline or a second signal
    # (the server's own grace is a backstop: the cut below is ours, so that it is logged).
    stopping = asyncio.ensure_future(server.stop(grace=opts.drain_seconds + 5))
    hurrying = asyncio.ensure_future(hurry.wait())
    await asyncio.wait([stopping, hurrying], timeout=opts.drain_seconds, return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        left = _open_streams(metrics)
        if hurry.is_set():
            log.warning("drain cut short by a second signal", open_streams=left)
        else:
            log.warning("drain deadline reached; cutting the open streams", open_streams=left)
        if startup.service is not None:
            startup.service.cutting = True  # their spend is estimated, not dropped
        await server.stop(grace=None)
        await stopping
        # The cut streams account for themselves (a store call each) before the store closes.
        for _ in range(100):
            if _open_streams(metrics) == 0:
                break
            await asyncio.sleep(0.05)
    hurrying.cancel()
    if startup.service is not None:
        await startup.service.settle()  # records sent after their replies
    left = _open_streams(metrics)
    log.info("drained", open_streams=left)


async def _confirm_pending(
    store: FailoverStore, deadline: float, hurry: asyncio.Event, journal_dir: str | None
) -> None:
    """Spend Redis has not confirmed, sent again for what is left of the drain: the journal
    outlives a container restart, but not the pod's deletion (an emptyDir)."""
    log.info("drain: waiting for Redis to confirm spend", pending_records=store.pending_records)
    flushing = asyncio.ensure_future(store.flush(max(0.0, deadline - time.monotonic())))
    hurrying = asyncio.ensure_future(hurry.wait())
    await asyncio.wait([flushing, hurrying], return_when=asyncio.FIRST_COMPLETED)
    hurrying.cancel()
    if not flushing.done():
        flushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flushing
    left = store.pending_records
    if left and journal_dir:
        # Kept, not lost: the next sidecar started on this journal sends them.
        log.warning("exiting with spend Redis has not confirmed", pending_records=left, journal=journal_dir)
    elif left:
        log.error(
            "exiting with spend Redis has not confirmed, and no journal: it is lost", pending_records=left
        )
    else:
        log.info("drain: Redis confirmed all spend")


def run(opts: ServeOptions) -> int:
    """Serve in this process, or pre-fork `workers` processes sharing the port."""
    configure_logging(opts.log_level)
    if opts.workers > 1 and not opts.redis_url:
        log.error("several workers need a shared spend store: set --redis-url")
        return 2
    for p in opts.config_paths if opts.source == "files" else ():
        if not Path(p).exists():
            log.error("config path does not exist", path=p)
            return 2
    if opts.workers <= 1:
        asyncio.run(serve(opts))
        return 0
    # Fork before any gRPC object exists: one event loop per process, same port.
    children = []
    for worker in range(opts.workers):
        pid = os.fork()
        if pid == 0:
            # Each worker its own journal: one process per directory (it is locked).
            journal = os.path.join(opts.journal_dir, f"worker-{worker}") if opts.journal_dir else None
            asyncio.run(serve(dataclasses.replace(opts, journal_dir=journal)))
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
