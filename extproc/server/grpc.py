"""The gRPC plumbing: the ExternalProcessor stream, health and reflection.

The stream loop guarantees Envoy's contract whatever our code does: exactly one reply
per message, of the matching type. An exception is logged, counted and answered with
the no-op reply; the stream goes on. When the stream ends (the client went away, or
Envoy reset it) the exchange is closed so its hold is released or its usage recorded.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2, external_processor_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from extproc.admin.proto import admin_pb2_grpc
from extproc.admin.service import SERVICE_NAME as ADMIN_SERVICE_NAME
from extproc.admin.service import BudgetAdmin
from extproc.envoy import wire
from extproc.envoy.service import BudgetService, Exchange
from extproc.telemetry import log

SERVICE_NAME = external_processor_pb2.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name


class ExternalProcessor(external_processor_pb2_grpc.ExternalProcessorServicer):
    def __init__(self, service: BudgetService) -> None:
        self.service = service

    async def Process(
        self,
        request_iterator: AsyncIterator[wire.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[wire.ProcessingResponse]:
        service = self.service
        metrics = service.metrics
        ex = Exchange(gateway=wire.invocation_gateway(context.invocation_metadata()))
        metrics.streams.inc()
        try:
            async for msg in request_iterator:
                kind = msg.WhichOneof("request") or "request_headers"
                metrics.messages[kind].inc()
                try:
                    reply = await service.handle(ex, msg)
                except Exception:
                    metrics.errors.labels(kind).inc()
                    log.exception("error handling ext_proc message; continuing", phase=kind, route=ex.route)
                    reply = wire.continue_reply(kind)
                yield reply
                if reply.HasField("immediate_response"):
                    break
        finally:
            # Ended by the drain's cut (grpc closes the handler; no exception reaches here).
            cut = service.cutting
            try:
                await service.close(ex, reason="cut by the drain" if cut else "stream ended", cut=cut)
            except Exception:
                metrics.errors.labels("close").inc()
                log.exception("error closing exchange", route=ex.route)
            finally:
                metrics.streams.dec()  # after its spend is accounted for: the drain waits on it


@dataclass(frozen=True, slots=True)
class GrpcTls:
    """The gRPC listener's certificate and key (PEM), and for mTLS the CA that signs the
    clients' certificates (Envoy's). Files are read again when they change (cert-manager
    rotates them in place): the next handshake serves the new ones."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def check(self, now: datetime.datetime | None = None) -> datetime.datetime:
        """Refuses, before serving, files that are missing, unreadable, not PEM, whose key is
        not the certificate's, or a certificate outside its validity: a clear error at
        start (or a rotation refused), not a failed handshake later. Returns when the
        certificate expires."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):  # another key, or type
                raise ssl.SSLError(
                    f"{self.key_file} is not the private key of {self.cert_file} ({exc.reason})"
                ) from exc
            raise ssl.SSLError(
                f"{self.cert_file}, {self.key_file}: not a PEM certificate and key ({exc})"
            ) from exc
        if self.client_ca_file:
            context.load_verify_locations(self.client_ca_file)
        not_before, not_after = certificate_validity(self.cert_file)
        now = now or datetime.datetime.now(datetime.UTC)
        if now > not_after:
            raise ssl.SSLError(f"{self.cert_file}: the certificate expired at {not_after.isoformat()}")
        if now < not_before:
            raise ssl.SSLError(
                f"{self.cert_file}: the certificate is not valid before {not_before.isoformat()}"
            )
        return not_after

    def _files(self) -> list[str]:
        return [f for f in (self.cert_file, self.key_file, self.client_ca_file) if f]

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self._files():
            with contextlib.suppress(OSError):
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def _configuration(self) -> Any:
        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        ca = read(self.client_ca_file) if self.client_ca_file else None
        return grpc.ssl_server_certificate_configuration(
            [(read(self.key_file), read(self.cert_file))], root_certificates=ca
        )

    def credentials(self) -> grpc.ServerCredentials:
        seen: dict[str, Any] = {"stamp": self._stamp(), "expires": certificate_validity(self.cert_file)[1]}

        def fetch() -> Any:
            # Called by gRPC before each handshake: a stat of each file, a reload on change.
            stamp = self._stamp()
            if stamp == seen["stamp"]:
                if seen["expires"] is not None and datetime.datetime.now(datetime.UTC) > seen["expires"]:
                    seen["expires"] = None  # said once
                    log.error(
                        "the gRPC certificate being served has expired; handshakes fail until it is renewed",
                        file=self.cert_file,
                    )
                return None
            try:
                expires = self.check()
                configuration = self._configuration()
            except (OSError, ssl.SSLError) as exc:  # half-written by a rotation: next time
                log.error("gRPC certificates not reloaded; serving the previous ones", error=str(exc))
                return None
            seen["stamp"], seen["expires"] = stamp, expires
            log.info("gRPC certificates reloaded", files=self._files())
            return configuration

        return grpc.dynamic_ssl_server_credentials(
            self._configuration(), fetch, require_client_authentication=self.client_ca_file is not None
        )


def certificate_validity(path: str) -> tuple[datetime.datetime, datetime.datetime]:
    """notBefore and notAfter of the first certificate in a PEM file (UTC), read from its
    DER: Certificate > TBSCertificate > [version] serial signature issuer validity."""
    with open(path) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    _, body, _ = _der(der, 0)  # Certificate
    _, pos, _ = _der(der, body)  # TBSCertificate: its first field
    tag, _, end = _der(der, pos)
    if tag == 0xA0:  # [0] version
        pos = end
    for _ in range(3):  # serialNumber, signature, issuer
        pos = _der(der, pos)[2]
    _, pos, _ = _der(der, pos)  # validity
    times = []
    for _ in range(2):
        tag, start, end = _der(der, pos)
        text = der[start:end].decode("ascii")
        layout = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"  # UTCTime, GeneralizedTime
        times.append(datetime.datetime.strptime(text, layout).replace(tzinfo=datetime.UTC))
        pos = end
    return times[0], times[1]


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """A DER element at `pos`: its tag, where its content starts, where it ends."""
    tag, length = data[pos], data[pos + 1]
    start = pos + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    if start + length > len(data):
        raise ssl.SSLError("certificate: truncated DER")
    return tag, start, start + length


def _prepare_unix_socket(address: str) -> None:
    """A stale socket file (a killed sidecar's) is removed; a live one is refused."""
    path = address.removeprefix("unix://").removeprefix("unix:")
    if not os.path.exists(path):
        return
    if not stat.S_ISSOCK(os.stat(path).st_mode):
        raise RuntimeError(f"Failed to bind to address {address}: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: left by a process that died
        return
    finally:
        probe.close()
    raise RuntimeError(f"Failed to bind to address {address}: another process serves on it")


def build_server(
    service: BudgetService,
    address: str,
    *,
    reuse_port: bool = False,
    tls: GrpcTls | None = None,
    admin: BudgetAdmin | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A grpc.aio server with ext_proc, the BudgetAdmin API, health and reflection; returns
    it and the bound port (0 for a Unix domain socket, `unix:PATH`). With `tls`: TLS, or
    mTLS with a client CA."""
    options = [("grpc.so_reuseport", 1 if reuse_port else 0)]
    server = grpc.aio.server(options=options)
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(service), server)
    admin_pb2_grpc.add_BudgetAdminServicer_to_server(admin or BudgetAdmin(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            ADMIN_SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    unix = address.startswith("unix:")
    if unix:
        _prepare_unix_socket(address)
    if tls is not None:
        tls.check()
        port = server.add_secure_port(address, tls.credentials())
    else:
        port = server.add_insecure_port(address)
    if port == 0 and not unix:  # older grpc answers 0 where newer raises
        raise RuntimeError(f"Failed to bind to address {address}")
    return server, port, health_servicer


async def mark_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
