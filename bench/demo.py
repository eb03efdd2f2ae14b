"""`make demo`: the field report's budget demo, live on this machine.

Envoy + the sidecar (in-memory store, examples/) + a mock OpenAI upstream; then the
report's traffic: 56, 704, 711 and 669 tokens admitted, the next request a 429.
"""

from __future__ import annotations

import asyncio
import sys

from tests.support.e2e import FIRST, call
from tests.support.http import HttpClient
from tests.support.procs import ROOT, Envoy, Proc, Sidecar, free_port, wait_for


async def traffic(port: int) -> None:
    client = HttpClient("127.0.0.1", port)
    print(
        f"POST http://127.0.0.1:{port}/budget-demo/v1/chat/completions"
        "  (HTTPRoute budget-demo, 2,000 tokens/day)"
    )
    try:
        r = await call(client, (17, 39), FIRST)
        print(f"first request: HTTP {r.status}  usage={r.json()['usage']}")
        for i, usage in enumerate(((21, 683), (22, 689), (20, 649)), start=1):
            r = await call(client, usage)
            print(f"request {i}: HTTP {r.status}  total_tokens={r.json()['usage']['total_tokens']}")
        r = await call(client, (20, 600))
        print(f"request 4: HTTP {r.status}")
        for h in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"):
            print(f"  {h}: {r.headers.get(h)}")
        print(f"  {r.body.decode()}")
        r = await call(client, (500, 500), path="/openai/v1/chat/completions")
        print(f"untouched /openai route meanwhile: HTTP {r.status}")
    finally:
        await client.close()


def main() -> int:
    procs: list[Proc] = []
    try:
        up_port = free_port()
        upstream = Proc("upstream", [sys.executable, "-m", "tests.support.http", str(up_port)])
        procs.append(upstream)
        wait_for(lambda: "upstream on" in upstream.output(), "mock upstream", proc=upstream)
        sidecar = Sidecar([str(ROOT / "examples")])
        procs.append(sidecar)
        envoy = Envoy(up_port, [sidecar.grpc_port])
        procs.append(envoy)
        asyncio.run(traffic(envoy.port))
        print("\nsidecar log (cost and budget lines):")
        for line in sidecar.json_lines():
            if line.get("event") in ("request", "budget exceeded"):
                keep = {k: v for k, v in line.items() if k not in ("timestamp",)}
                print(" ", keep)
        return 0
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
