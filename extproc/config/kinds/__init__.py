"""The kinds the sidecar reads, one module each, and the dispatch from a document to its kind.

A document of a kind we read becomes a `Fragment`; any other Kubernetes kind (Gateway,
HTTPRoute, Deployment...) belongs to someone else and is left alone. A kind or apiVersion
that is almost ours is a mistake, reported with a did-you-mean, never silently dropped.
"""

from __future__ import annotations

import difflib

from extproc.config.documents import Map, Node, describe, is_null
from extproc.config.fields import Reporter
from extproc.config.kinds.base import Fragment, Handler, Meta
from extproc.config.kinds.budgets import parse_budget
from extproc.config.kinds.catalog import parse_config_map, parse_parameters
from extproc.config.kinds.dimensions import parse_dimensions
from extproc.config.kinds.namespaces import parse_namespace, parse_namespace_labels
from extproc.config.kinds.policies import parse_budget_policy, parse_enterprise_policy

__all__ = [
    "AGENTGATEWAY",
    "CLUSTER_SCOPED",
    "ENTERPRISE",
    "KINDS",
    "OURS",
    "Fragment",
    "identity",
    "parse_document",
]

ENTERPRISE = "enterpriseagentgateway.solo.io/v1alpha1"
# The upstream docs show this group for the Parameters kind while the charts install the
# enterprise one (the field report's gotcha): accept both so either manifest loads.
AGENTGATEWAY = "agentgateway.dev/v1alpha1"
OURS = "budgets.extproc.dev/v1alpha1"
_CORE = "v1"

KINDS: dict[tuple[str, str], Handler] = {
    (ENTERPRISE, "EnterpriseAgentgatewayBudget"): parse_budget,
    (OURS, "Budget"): parse_budget,
    (ENTERPRISE, "EnterpriseAgentgatewayPolicy"): parse_enterprise_policy,
    (OURS, "BudgetPolicy"): parse_budget_policy,
    (ENTERPRISE, "EnterpriseAgentgatewayParameters"): parse_parameters,
    (AGENTGATEWAY, "EnterpriseAgentgatewayParameters"): parse_parameters,
    (OURS, "BudgetDimensions"): parse_dimensions,
    (_CORE, "ConfigMap"): parse_config_map,
    (_CORE, "Namespace"): parse_namespace,
    (OURS, "BudgetNamespaces"): parse_namespace_labels,
}
CLUSTER_SCOPED = frozenset({"Namespace", "BudgetNamespaces"})
# Both budget kinds share budget ids (`namespace/resource/entry`), so they must not share names.
_IDENTITY_KIND = {"EnterpriseAgentgatewayBudget": "Budget"}
# Groups where every kind is ours to read: an unknown kind there is a typo. The report's
# groups hold the commercial product's other kinds too: only a near miss of ours is flagged.
_OWN_GROUPS = frozenset({OURS.partition("/")[0]})
_GROUPS = sorted({version.partition("/")[0] for version, _ in KINDS if "/" in version})
_OUR_KINDS = sorted({kind for version, kind in KINDS if version != _CORE})


def identity(kind: str, namespace: str, name: str) -> tuple[str, str, str]:
    """What must be unique across the configuration: (kind, namespace, name)."""
    return (_IDENTITY_KIND.get(kind, kind), "" if kind in CLUSTER_SCOPED else namespace, name)


def parse_document(r: Reporter, node: Node) -> list[Fragment]:
    """The fragments of one document: none (not ours, or unreadable), one, or a `List`'s items.

    Problems that stop a document from being recognised at all (no kind, a typo in it)
    are reported to `r`; problems inside a recognised resource go to its fragment.
    """
    if is_null(node):
        return []  # an empty document between `---` markers
    if not isinstance(node, Map):
        r.add(node.line, "", f"a document must be a mapping with apiVersion and kind, got {describe(node)}")
        return []
    api_version = r.string(r.get(node, "apiVersion", "", required=True), "apiVersion")
    kind = r.string(r.get(node, "kind", "", required=True), "kind")
    if api_version is None or kind is None:
        return []
    if (api_version, kind) == (_CORE, "List"):  # what `kubectl get -o yaml` prints
        items = r.sequence(r.get(node, "items", "", required=True), "items")
        fragments: list[Fragment] = []
        for i, item in enumerate(items.items if items else ()):
            fragments += parse_document(r.nested(f"items[{i}]"), item)
        return fragments
    handler = KINDS.get((api_version, kind))
    if handler is None:
        _unknown(r, node, api_version, kind)
        return []
    own = r.apart()
    meta = _metadata(own, node)
    fragment = Fragment(
        api_version,
        kind,
        "" if kind in CLUSTER_SCOPED else (meta.namespace if meta else ""),
        meta.name if meta else "",
        own,
        meta.line if meta else node.line,
    )
    if meta is not None:
        handler(own, node, meta, fragment)
    return [fragment]


def _unknown(r: Reporter, node: Map, api_version: str, kind: str) -> None:
    """A kind we do not read: someone else's, unless it is a near miss of ours."""
    group = api_version.rpartition("/")[0]
    near_group = group in _GROUPS or bool(difflib.get_close_matches(group, _GROUPS, n=1, cutoff=0.8))
    expected = [known for known, known_kind in KINDS if known_kind == kind]
    if expected:
        # One of our kinds under another apiVersion: a wrong version, or a typo in the group.
        if near_group:
            r.add(
                node.fields["apiVersion"].line,
                "apiVersion",
                f"unsupported for {kind}; expected {' or '.join(expected)}",
            )
        return
    kinds_here = sorted({k for known, k in KINDS if known.rpartition("/")[0] == group}) or _OUR_KINDS
    guess = _close_kind(kind, kinds_here)
    # In our own group every kind is ours; the report's groups also hold the product's
    # other kinds, so there (and under a misspelt group) only a near miss is flagged.
    if group in _OWN_GROUPS or (near_group and guess):
        hint = f' (did you mean "{guess}"?)' if guess else ""
        r.add(
            node.fields["kind"].line,
            "kind",
            f'unknown kind "{kind}" in {api_version}{hint}; expected one of: {", ".join(kinds_here)}',
        )


def _close_kind(kind: str, kinds: list[str]) -> str | None:
    folded = {k.lower(): k for k in kinds}
    if kind.lower() in folded:  # `EnterpriseAgentGatewayBudget`: only the case is wrong
        return folded[kind.lower()]
    guess = difflib.get_close_matches(kind, kinds, n=1, cutoff=0.9)
    return guess[0] if guess else None


def _metadata(r: Reporter, doc: Map) -> Meta | None:
    meta = r.mapping(r.get(doc, "metadata", "", required=True), "metadata")
    if meta is None:
        return None
    name_node = r.get(meta, "name", "metadata", required=True)
    name = r.string(name_node, "metadata.name")
    namespace_node = r.get(meta, "namespace", "metadata")
    namespace = "default" if namespace_node is None else r.string(namespace_node, "metadata.namespace")
    labels = r.text_map(r.get(meta, "labels", "metadata"), "metadata.labels")
    if name is None or name_node is None or namespace is None or labels is None:
        return None
    return Meta(name, namespace, labels, name_node.line)
