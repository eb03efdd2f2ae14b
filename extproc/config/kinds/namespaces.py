"""Namespace labels for Selector discovery: Namespace manifests and BudgetNamespaces."""

from __future__ import annotations

from extproc.config.documents import Map, join
from extproc.config.fields import Reporter
from extproc.config.kinds.base import Fragment, Meta, NamespaceLabels

__all__ = ["parse_namespace", "parse_namespace_labels"]


def parse_namespace(r: Reporter, doc: Map, meta: Meta, out: Fragment) -> None:
    """A Namespace: only its labels matter here."""
    out.namespaces.append(
        NamespaceLabels(meta.name, meta.line, "metadata.name", _labelled(meta.name, meta.labels))
    )


def _labelled(name: str, labels: dict[str, str]) -> dict[str, str]:
    # Kubernetes labels every namespace with its name; selectors written for a cluster
    # (`kubernetes.io/metadata.name: team-a`) then work the same from files.
    return {**labels, "kubernetes.io/metadata.name": name}


def parse_namespace_labels(r: Reporter, doc: Map, meta: Meta, out: Fragment) -> None:
    """`BudgetNamespaces`: namespace labels for Selector discovery without Namespace manifests."""
    spec = r.mapping(r.get(doc, "spec", "", required=True), "spec")
    r.only(spec, "spec", ("namespaces",))
    namespaces = r.mapping(r.get(spec, "namespaces", "spec", required=True), "spec.namespaces")
    if namespaces is None:
        return
    for name, node in namespaces.fields.items():
        path, line = join("spec.namespaces", name), namespaces.key_lines[name]
        labels = r.text_map(node, path)
        if labels is not None:
            out.namespaces.append(NamespaceLabels(name, line, path, _labelled(name, labels)))
