"""The field report's manifests, verbatim (its team split is a bare `spec:`; the header
around it is ours), for the tests that must load them unchanged: the loader's and the CRDs'.
A copy lives here because the report itself sits outside the repository."""

from __future__ import annotations

import yaml

REPORT_CATALOG = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: model-cost-catalog
  namespace: agentgateway-system
data:
  catalog.json: |
    {
      "providers": {
        "openai": {
          "models": {
            "gpt-4o": {
              "rates": { "input": "2.50", "output": "10.00" }
            },
            "gpt-4o-mini": {
              "rates": { "input": "0.15", "output": "0.60" }
            }
          }
        }
      }
    }
---
apiVersion: enterpriseagentgateway.solo.io/v1alpha1
kind: EnterpriseAgentgatewayParameters
metadata:
  name: agentgateway-proxy-params
  namespace: agentgateway-system
spec:
  modelCatalog:
    sources:
      - configMap:
          name: model-cost-catalog
          key: catalog.json
"""

REPORT_GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: agentgateway-proxy
  namespace: agentgateway-system
spec:
  gatewayClassName: enterprise-agentgateway
  infrastructure:
    parametersRef:
      group: enterpriseagentgateway.solo.io
      kind: EnterpriseAgentgatewayParameters
      name: agentgateway-proxy-params
  listeners:
    - name: http
      protocol: HTTP
      port: 80
      allowedRoutes:
        namespaces:
          from: All
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: budget-demo
  namespace: agentgateway-system
spec:
  parentRefs:
    - name: agentgateway-proxy
      namespace: agentgateway-system
  rules:
    - matches:
        - path:
            type: PathPrefix
            value: /budget-demo
      backendRefs:
        - name: openai
          namespace: agentgateway-system
          group: agentgateway.dev
          kind: AgentgatewayBackend
"""

REPORT_BUDGET = """\
apiVersion: enterpriseagentgateway.solo.io/v1alpha1
kind: EnterpriseAgentgatewayBudget
metadata:
  name: budget-demo
  namespace: agentgateway-system
spec:
  budgets:
    - name: demo-usd-audit
      limit:
        unit: USD
        amount: 5
      window:
        unit: Day
      onBudgetExceeded: Audit
    - name: demo-token-block
      limit:
        unit: Tokens
        amount: 2000
      window:
        unit: Day
      onBudgetExceeded: Block
---
apiVersion: enterpriseagentgateway.solo.io/v1alpha1
kind: EnterpriseAgentgatewayPolicy
metadata:
  name: budget-demo-enforcement
  namespace: agentgateway-system
spec:
  targetRefs:
    - group: gateway.networking.k8s.io
      kind: HTTPRoute
      name: budget-demo
  traffic:
    entBudgetEnforcement:
      discovery:
        namespaces:
          from: Same
"""

# The report shows only the `spec:` of its per-team budget; the header around it is ours.
REPORT_TEAMS = """\
apiVersion: enterpriseagentgateway.solo.io/v1alpha1
kind: EnterpriseAgentgatewayBudget
metadata:
  name: team-budgets
  namespace: agentgateway-system
spec:
  budgets:
    - name: eng-monthly
      subject:
        group: engineering   # up to 16 key/value dimensions per entry
      limit:
        unit: USD
        amount: 500
      window:
        unit: Month
      onBudgetExceeded: Block
    - name: product-monthly
      subject:
        group: product
      limit:
        unit: USD
        amount: 200
      window:
        unit: Month
      onBudgetExceeded: Block
    - name: everyone-else
      subject:
        group: "*"           # any request that carries a group dimension
      limit:
        unit: USD
        amount: 100
      window:
        unit: Month
      onBudgetExceeded: Audit
"""


ALL = (REPORT_CATALOG, REPORT_GATEWAY, REPORT_BUDGET, REPORT_TEAMS)


def documents() -> list[dict]:
    """Every manifest of the report, as dicts."""
    return [d for text in ALL for d in yaml.safe_load_all(text) if d]
