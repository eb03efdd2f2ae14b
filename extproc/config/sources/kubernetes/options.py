"""What `--source kubernetes` is told: apart from the client, so that importing it (the
serve options do) does not load kubernetes_asyncio, tens of MB, in files mode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    # A kubeconfig file; None: the pod's service account (in a cluster).
    kubeconfig: str | None = None
    # Watch only these namespaces (namespace-scoped RBAC suffices; no Selector labels then).
    namespaces: Sequence[str] = ()
    # Where the status Lease lives: the sidecar's own namespace by default.
    lease_namespace: str | None = None
    write_status: bool = True
    watch_seconds: int = 300
    lease_seconds: int = 15
    renew_seconds: float = 5.0
