"""How long a change to a custom resource takes to reach the sidecar's configuration.

`python -m bench.kubernetes_watch [--edits N] [--budgets N]`: the Kubernetes source
(kubernetes_asyncio, our list/watch loop) against tests/support/kube_api.py on loopback;
each edit of one Budget is timed from the API server's write to the new `Config`. The
50 ms batching of changes is part of the figure. Also: the first full list of N budgets.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from extproc.config.model import Config
from extproc.config.sources.kubernetes.cluster import Cluster, ClusterOptions, api_client
from tests.support.kube_api import KubeApiServer


def budget(namespace: str, name: str, amount: int) -> dict:
    entry = {"name": "daily", "limit": {"unit": "Tokens", "amount": amount}, "window": {"unit": "Day"}}
    entry["onBudgetExceeded"] = "Block"
    return {
        "apiVersion": "budgets.extproc.dev/v1alpha1",
        "kind": "Budget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"budgets": [entry]},
    }


def limit(config: Config | None, budget_id: str) -> int | None:
    for resource in config.budgets if config else ():
        for entry in resource.entries:
            if entry.budget_id == budget_id:
                return int(entry.amount)
    return None


async def run(edits: int, budgets: int) -> None:
    with KubeApiServer() as kube:
        for i in range(budgets):
            namespace = f"team-{i % 50}"
            kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            kube.apply(budget(namespace, f"b{i}", 100))
        kubeconfig = kube.write_kubeconfig(Path(tempfile.mkdtemp()) / "kubeconfig")
        opts = ClusterOptions(kubeconfig=str(kubeconfig), write_status=False)
        cluster = Cluster(await api_client(str(kubeconfig)), opts, lambda _config: None, CollectorRegistry())
        started = time.monotonic()
        await cluster.start()
        await cluster.source.wait_ready(60)
        print(f"first full list of {budgets} budgets: {(time.monotonic() - started) * 1000:.0f} ms")
        latencies = []
        for i in range(edits):
            written = time.monotonic()
            kube.apply(budget("team-0", "b0", 1000 + i))
            while limit(cluster.source.config, "team-0/b0/daily") != 1000 + i:
                await asyncio.sleep(0.001)
            latencies.append(time.monotonic() - written)
        await cluster.stop()
    ms = sorted(x * 1000 for x in latencies)
    print(
        f"edit -> config, {edits} edits: median {statistics.median(ms):.0f} ms, "
        f"p90 {ms[int(len(ms) * 0.9) - 1]:.0f} ms, max {ms[-1]:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--budgets", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(run(args.edits, args.budgets))


if __name__ == "__main__":
    main()
