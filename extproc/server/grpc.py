"""The gRPC plumbing: the ExternalProcessor stream, health and reflection.

The stream loop guarantees Envoy's contract whatever our code does: exactly one reply
per message, of the matching type. An exception is logged, counted and answered with
the no-op reply; the stream goes on. When the stream ends (the client went away, or
Envoy reset it) the exchange is closed so its hold is released or its usage recorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2, external_processor_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from extproc.server import wire
from extproc.service import BudgetService, Exchange
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
            metrics.streams.dec()
            try:
                await service.close(ex, reason="stream ended")
            except Exception:
                metrics.errors.labels("close").inc()
                log.exception("error closing exchange", route=ex.route)


def build_server(
    service: BudgetService, address: str, *, reuse_port: bool = False
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A grpc.aio server with ext_proc, health and reflection; returns it and the bound port."""
    options = [("grpc.so_reuseport", 1 if reuse_port else 0)]
    server = grpc.aio.server(options=options)
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:  # older grpc answers 0 where newer raises
        raise RuntimeError(f"Failed to bind to address {address}")
    return server, port, health_servicer


async def mark_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
