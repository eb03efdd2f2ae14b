"""The Kubernetes source, the status writer and the status lease, started and stopped together."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from kubernetes_asyncio import client, config
from prometheus_client import CollectorRegistry

from extproc.catalog.model import CatalogDocument
from extproc.config.model import Config
from extproc.config.sources.kubernetes.lease import LeaderElector
from extproc.config.sources.kubernetes.options import ClusterOptions
from extproc.config.sources.kubernetes.source import KubernetesMetrics, KubernetesSource
from extproc.config.sources.kubernetes.status import StatusMetrics, StatusWriter

__all__ = ["Cluster", "ClusterOptions", "api_client"]

_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LEASE_NAME = "extproc-budgets-status"


async def api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client for the given kubeconfig, or for the pod's service account."""
    configuration = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def _lease_namespace(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


class Cluster:
    """Everything `--source kubernetes` runs: call `start`, await `source.wait_ready`, `stop`."""

    def __init__(
        self,
        api: client.ApiClient,
        opts: ClusterOptions,
        on_config: Callable[[Config], None],
        registry: CollectorRegistry,
        catalogs: Sequence[CatalogDocument] = (),
    ) -> None:
        self.api = api
        self.elector: LeaderElector | None = None
        self.writer: StatusWriter | None = None
        if opts.write_status:
            identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
            self.elector = LeaderElector(
                api,
                _lease_namespace(opts.lease_namespace),
                LEASE_NAME,
                identity,
                lease_seconds=opts.lease_seconds,
                renew_seconds=opts.renew_seconds,
            )
            elector = self.elector
            self.writer = StatusWriter(api, StatusMetrics(registry), lambda: elector.is_leader)
        self.source = KubernetesSource(
            api,
            on_config,
            KubernetesMetrics(registry),
            namespaces=opts.namespaces,
            catalogs=catalogs,
            on_state=self.writer.offer if self.writer else None,
            watch_seconds=opts.watch_seconds,
        )

    async def start(self) -> None:
        await self.source.start()
        if self.elector is not None and self.writer is not None:
            self.elector.start()
            self.writer.start()

    async def stop(self) -> None:
        if self.writer is not None:
            await self.writer.stop()
        if self.elector is not None:
            await self.elector.stop()
        await self.source.stop()
        await self.api.close()
