#!/usr/bin/env bash
# A local cluster that shows Kubernetes-native budgets end to end, with no real LLM:
# kind + the sidecar (`extproc serve --source kubernetes`) + Envoy whose upstream is an
# Envoy direct_response that reports 700 tokens a call. Team A's 2,000-token/day Budget is
# enforced on the route `budget-demo`; the fourth call is a 429.
#
# Needs kind, kubectl, docker and curl. Run it from anywhere: ./deploy/kind/up.sh
# Environment: CLUSTER (default extproc-budgets), GATEWAY_API_VERSION (default v1.2.1;
# "none" to skip installing the Gateway API CRDs), LOCAL_PORT (default 18080).
# Tear down with ./deploy/kind/down.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cluster="${CLUSTER:-extproc-budgets}"
gateway_api="${GATEWAY_API_VERSION:-v1.2.1}"
port="${LOCAL_PORT:-18080}"
image="extproc-budgets:dev"

say() { printf '\n==> %s\n' "$*"; }

for tool in kind kubectl docker curl; do
  command -v "$tool" >/dev/null || { echo "up.sh needs $tool on PATH" >&2; exit 1; }
done

say "cluster $cluster"
if kind get clusters | grep -qx "$cluster"; then
  echo "already exists; reusing it"
else
  kind create cluster --name "$cluster" --wait 120s
fi
kubectl config use-context "kind-$cluster" >/dev/null

say "image $image from $root/Dockerfile"
docker build -t "$image" "$root"
kind load docker-image "$image" --name "$cluster"

say "CRDs: ours, and the field report's kinds (no Solo product in this cluster)"
kubectl apply --server-side -f "$root/deploy/crds/budgets.extproc.dev.yaml"
kubectl apply --server-side -f "$root/deploy/crds/enterpriseagentgateway.solo.io.yaml"
if [ "$gateway_api" != "none" ]; then
  # HTTPRoute and Gateway, so that the policy's target exists (no Gateway API controller runs).
  kubectl apply --server-side -f \
    "https://github.com/kubernetes-sigs/gateway-api/releases/download/$gateway_api/standard-install.yaml"
fi
kubectl wait --for=condition=Established --timeout=60s crd --all

say "namespaces, ServiceAccount and RBAC"
kubectl apply -f "$here/namespaces.yaml"
kubectl apply -f "$root/deploy/kubernetes/base/service-account.yaml"
kubectl apply -k "$root/deploy/rbac"

say "the sidecar and Envoy"
kubectl apply -f "$here/extproc.yaml" -f "$here/envoy.yaml"
kubectl -n agentgateway-system rollout restart deployment/extproc-budgets >/dev/null  # a rebuilt image
kubectl -n agentgateway-system rollout status deployment/extproc-budgets --timeout=180s
kubectl -n agentgateway-system rollout status deployment/envoy --timeout=180s

say "team-a: HTTPRoute budget-demo, a 2,000-token/day Block Budget, and its BudgetPolicy"
if [ "$gateway_api" = "none" ]; then
  # Without the Gateway API CRDs the HTTPRoute is refused (the rest is applied), and the
  # policy reports TargetNotFound.
  kubectl apply -f "$here/team-a.yaml" || true
else
  kubectl apply -f "$here/team-a.yaml"
fi
if ! kubectl -n team-a wait --for=condition=Enforced --timeout=60s budget/team-a-tokens; then
  echo "warning: the Budget does not say Enforced=True yet; trying traffic anyway" >&2
fi

say "traffic through Envoy (port-forward on localhost:$port)"
kubectl -n agentgateway-system port-forward service/envoy "$port:8080" >/dev/null 2>&1 &
forward=$!
body="$(mktemp)"
headers="$(mktemp)"
trap 'kill "$forward" 2>/dev/null || true; rm -f "$body" "$headers"' EXIT
for _ in $(seq 1 30); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 1
done

url="http://127.0.0.1:$port/budget-demo/v1/chat/completions"
request='{"model":"gpt-4o","messages":[{"role":"user","content":"In one sentence, what is a token budget?"}],"max_tokens":800}'
blocked=""
for n in $(seq 1 10); do
  code="$(curl -s -D "$headers" -o "$body" -w '%{http_code}' "$url" \
    -H 'content-type: application/json' -d "$request")"
  tokens="$(grep -o '"total_tokens":[0-9]*' "$body" || true)"
  echo "request $n: HTTP $code ${tokens}"
  if [ "$code" = "429" ]; then
    blocked="$n"
    grep -i -E '^(x-ratelimit-|retry-after|x-budget-id)' "$headers" || true
    cat "$body"; echo
    break
  fi
done

say "kubectl get budgets,budgetpolicies -A"
kubectl get budgets,budgetpolicies -A

if [ -z "$blocked" ]; then
  echo "no 429 after 10 requests: see kubectl -n agentgateway-system logs deployment/extproc-budgets" >&2
  exit 1
fi
echo
echo "The budget blocked request $blocked. Tear down with $here/down.sh"
