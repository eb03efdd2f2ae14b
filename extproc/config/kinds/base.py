"""What one resource contributes to the configuration, before it meets the others.

Each kind's module turns one document into a `Fragment`; `extproc.config.assemble` then
puts fragments together, doing the checks that span resources (a dimension defined twice,
a ConfigMap a Parameters names). Keeping a resource's contribution apart is what lets the
Kubernetes source skip one team's invalid object and keep everyone else's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from extproc.config.documents import Map
from extproc.config.fields import Reporter
from extproc.config.model import BudgetResource, Dimension, EnforcementPolicy

__all__ = [
    "CatalogRef",
    "ConfigMapData",
    "DimensionClaim",
    "Fragment",
    "Handler",
    "Meta",
    "NamespaceLabels",
]


@dataclass(frozen=True, slots=True)
class Meta:
    name: str
    namespace: str
    labels: dict[str, str]
    line: int  # of metadata.name, where a duplicate is reported


@dataclass(slots=True)
class ConfigMapData:
    """A ConfigMap kept whole: whether it is a catalog is known only once every Parameters is read."""

    data: Map | None
    report: Reporter


@dataclass(frozen=True, slots=True)
class CatalogRef:
    """A Parameters resource's `configMap` source, resolved once every resource is read."""

    namespace: str
    name: str
    key: str
    report: Reporter
    line: int
    key_line: int
    path: str


@dataclass(frozen=True, slots=True)
class DimensionClaim:
    """A key a BudgetDimensions resource defines; `dimension` is None when its definition
    is invalid (the key is still taken, so a second definition is still reported)."""

    key: str
    line: int
    path: str
    dimension: Dimension | None


@dataclass(frozen=True, slots=True)
class NamespaceLabels:
    """A namespace's labels, from a Namespace manifest or a BudgetNamespaces entry."""

    name: str
    line: int
    path: str
    labels: dict[str, str]


@dataclass(slots=True)
class Fragment:
    api_version: str
    kind: str
    namespace: str  # "" for cluster-scoped kinds
    name: str
    report: Reporter  # this resource's own problems
    line: int
    budget: BudgetResource | None = None
    policy: EnforcementPolicy | None = None
    dimensions: list[DimensionClaim] = field(default_factory=list)
    namespaces: list[NamespaceLabels] = field(default_factory=list)
    config_map: ConfigMapData | None = None
    catalog_refs: list[CatalogRef] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.report.problems


Handler = Callable[[Reporter, Map, Meta, Fragment], None]
