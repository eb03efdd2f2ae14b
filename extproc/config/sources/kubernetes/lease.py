"""Leader election on a `coordination.k8s.io/v1` Lease: one replica writes status.

Every replica enforces; only status writing needs one writer, or replicas would flap the
conditions' times against each other. This is client-go's leaderelection in small: the
holder renews `renewTime` every `renew_seconds`; another replica takes the Lease over only
when it has seen the same Lease version unchanged for `lease_seconds` of its *own* clock
(so replicas' clocks need not agree), and every write carries the resourceVersion it read,
so two replicas racing for it cannot both win (the loser gets 409 Conflict).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import random
import time
from typing import Any

from kubernetes_asyncio import client

from extproc.background import Background
from extproc.telemetry import log

__all__ = ["LeaderElector"]


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
    ) -> None:
        self._leases = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self._leader_until = 0.0  # monotonic time our leadership is good until
        self._observed: tuple[str, float] | None = None  # (resourceVersion, when first seen)
        self._loop = Background("leader-election", self._run)

    @property
    def is_leader(self) -> bool:
        return time.monotonic() < self._leader_until

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        if self.is_leader:
            await self._release()

    async def _run(self) -> None:
        while True:
            was = self.is_leader
            try:
                await self.try_acquire_or_renew()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # unreachable: leadership lapses on its own clock
                log.warning(
                    "status lease not renewed", lease=f"{self.namespace}/{self.name}", error=str(error)
                )
            if self.is_leader != was:
                log.info(
                    "status lease " + ("acquired" if self.is_leader else "lost"),
                    lease=f"{self.namespace}/{self.name}",
                    identity=self.identity,
                )
            await asyncio.sleep(self.renew_seconds * (0.8 + 0.4 * random.random()))

    async def try_acquire_or_renew(self) -> bool:
        """One round: create, renew or take over the Lease; returns whether we hold it."""
        started = time.monotonic()
        try:
            lease = await self._leases.read_namespaced_lease(self.name, self.namespace, _request_timeout=5)
        except client.ApiException as error:
            if error.status != 404:
                raise
            return await self._write(None, started, transitions=0)
        spec = lease.spec
        holder = spec.holder_identity if spec else None
        version = lease.metadata.resource_version
        if holder == self.identity:
            return await self._write(lease, started, transitions=spec.lease_transitions or 0)
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, started)  # the holder renewed (or it changed hands)
        duration = (spec.lease_duration_seconds if spec else None) or self.lease_seconds
        if holder and started - self._observed[1] < duration:
            self._leader_until = 0.0
            return False
        return await self._write(
            lease, started, transitions=((spec.lease_transitions or 0) + 1) if spec else 1
        )

    async def _write(self, lease: Any, started: float, *, transitions: int) -> bool:
        now = _micro_now()
        keep = lease is not None and lease.spec is not None and lease.spec.holder_identity == self.identity
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": (
                    lease.spec.acquire_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    if keep and lease.spec.acquire_time
                    else now
                ),
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }
        try:
            if lease is None:
                await self._leases.create_namespaced_lease(self.namespace, body, _request_timeout=5)
            else:
                body["metadata"]["resourceVersion"] = lease.metadata.resource_version
                await self._leases.replace_namespaced_lease(
                    self.name, self.namespace, body, _request_timeout=5
                )
        except client.ApiException as error:
            if error.status in (409, 422):  # another replica wrote first
                self._leader_until = 0.0
                return False
            raise
        # Counted from before the read: a renewal that took long shortens the term, never lengthens it.
        self._leader_until = started + self.lease_seconds * 2 / 3
        return True

    async def _release(self) -> None:
        """Hand the Lease over at once on a clean stop rather than after it expires."""
        with contextlib.suppress(Exception):
            lease = await self._leases.read_namespaced_lease(self.name, self.namespace, _request_timeout=2)
            if lease.spec and lease.spec.holder_identity == self.identity:
                body = {
                    "metadata": {
                        "name": self.name,
                        "namespace": self.namespace,
                        "resourceVersion": lease.metadata.resource_version,
                    },
                    "spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _micro_now()},
                }
                await self._leases.replace_namespaced_lease(
                    self.name, self.namespace, body, _request_timeout=2
                )
        self._leader_until = 0.0
