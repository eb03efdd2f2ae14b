"""The floor: a no-op ext_proc server (grpc.aio, xds-protos) answering every message it gets
with the empty reply of its kind. Any Python design that blocks the same phases costs at
least this. Usage: python -m bench.noop_extproc PORT"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg


class Noop(pbg.ExternalProcessorServicer):
    async def Process(
        self, requests: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for req in requests:
            reply = pb.ProcessingResponse()
            getattr(reply, req.WhichOneof("request")).SetInParent()
            yield reply


async def main(port: int) -> None:
    server = grpc.aio.server()
    pbg.add_ExternalProcessorServicer_to_server(Noop(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
