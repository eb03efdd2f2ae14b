#!/usr/bin/env bash
# Deletes the kind cluster that up.sh made (CLUSTER, default extproc-budgets), and with it
# everything up.sh applied. The image stays in the local Docker daemon.
set -euo pipefail

cluster="${CLUSTER:-extproc-budgets}"
command -v kind >/dev/null || { echo "down.sh needs kind on PATH" >&2; exit 1; }
if kind get clusters | grep -qx "$cluster"; then
  kind delete cluster --name "$cluster"
else
  echo "no kind cluster named $cluster"
fi
