"""Fragments in, one frozen `Config` out: the checks that span resources.

Each resource was parsed on its own (see `kinds/`); here they meet. What only shows then
is checked here: a resource defined twice, a dimension key or a namespace's labels defined
by two resources, a Parameters naming a ConfigMap that is missing or holds no catalog.
The later resource is the one reported, and only its conflicting part is left out.

Assembling never raises: the file source turns any problem into a `ConfigError` (a file
is fixed as a whole), the Kubernetes source reports each object's problems on that object
and serves the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from extproc.catalog.model import CatalogDocument
from extproc.config.errors import Problem
from extproc.config.fields import Reporter
from extproc.config.kinds import Fragment, identity
from extproc.config.kinds.base import ConfigMapData
from extproc.config.kinds.catalog import resolve_catalogs
from extproc.config.model import BudgetResource, Config, Dimension, EnforcementPolicy, frozen_map

__all__ = ["Assembly", "assemble"]


@dataclass(slots=True)
class Assembly:
    """The configuration the fragments add up to, and what was wrong when they met."""

    config: Config
    # id(fragment) -> the problems found when it met the others (its own are on its report)
    _met: dict[int, Reporter] = field(default_factory=dict)

    def problems_of(self, fragment: Fragment) -> list[Problem]:
        """Every problem of one resource: its own and those found when it met the others."""
        met = self._met.get(id(fragment))
        return [*fragment.report.problems, *(met.problems if met else ())]

    def problems(self, fragments: Sequence[Fragment]) -> list[Problem]:
        return [problem for fragment in fragments for problem in self.problems_of(fragment)]


def assemble(
    fragments: Sequence[Fragment], catalogs: Sequence[CatalogDocument] = (), sources: Sequence[str] = ()
) -> Assembly:
    """Puts fragments together in the order given (earlier wins a conflict); an invalid
    fragment takes part in the conflict checks but contributes nothing.

    `catalogs` (the `--catalog` files) layer after the ConfigMap catalogs Parameters name.
    """
    met: dict[int, Reporter] = {}
    by_report: dict[int, Fragment] = {id(f.report): f for f in fragments}

    def report(fragment: Fragment) -> Reporter:
        if id(fragment) not in met:
            met[id(fragment)] = fragment.report.apart()
        return met[id(fragment)]

    def report_of(own: Reporter) -> Reporter:
        # Catalog references carry the reporter of the resource that made them.
        fragment = by_report.get(id(own))
        return report(fragment) if fragment is not None else own

    def claim_first(
        fragment: Fragment, key: str, line: int, path: str, sites: dict[str, str], what: str, verb: str
    ) -> bool:
        """The first resource to claim a key (a dimension, a namespace's labels) gets it;
        a later one is reported where it claims it."""
        if key in sites:
            report(fragment).add(line, path, f'{what} "{key}" is already {verb} at {sites[key]}')
            return False
        sites[key] = fragment.report.site(line)
        return True

    resources: dict[tuple[str, str, str], str] = {}
    budgets: list[BudgetResource] = []
    policies: list[EnforcementPolicy] = []
    dimensions: dict[str, Dimension] = {}
    dimension_sites: dict[str, str] = {}
    namespace_labels: dict[str, dict[str, str]] = {}
    namespace_sites: dict[str, str] = {}
    config_maps: dict[tuple[str, str], ConfigMapData] = {}
    refs = []
    for fragment in fragments:
        if fragment.name:
            key = identity(fragment.kind, fragment.namespace, fragment.name)
            if key in resources:
                shown = f"{fragment.namespace}/{fragment.name}" if fragment.namespace else fragment.name
                report(fragment).add(
                    fragment.line,
                    "metadata.name",
                    f'{fragment.kind} "{shown}" is defined twice (first at {resources[key]})',
                )
                continue
            resources[key] = fragment.report.site(fragment.line)
        valid = fragment.valid
        for claim in fragment.dimensions:
            if (
                claim_first(
                    fragment, claim.key, claim.line, claim.path, dimension_sites, "dimension", "defined"
                )
                and valid
                and claim.dimension is not None
            ):
                dimensions[claim.key] = claim.dimension
        for labelled in fragment.namespaces:
            if (
                claim_first(
                    fragment,
                    labelled.name,
                    labelled.line,
                    labelled.path,
                    namespace_sites,
                    "namespace",
                    "labelled",
                )
                and valid
            ):
                namespace_labels[labelled.name] = labelled.labels
        if fragment.config_map is not None:
            config_maps[(fragment.namespace, fragment.name)] = fragment.config_map
        refs += fragment.catalog_refs
        if not valid:
            continue
        if fragment.budget is not None:
            budgets.append(fragment.budget)
        if fragment.policy is not None:
            policies.append(fragment.policy)
    # ConfigMap catalogs first, then --catalog files: the catalog layers later over earlier.
    documents = [*resolve_catalogs(refs, config_maps, report_of), *catalogs]
    config = Config(
        budgets=tuple(budgets),
        policies=tuple(policies),
        dimensions=MappingProxyType(dimensions),
        catalogs=tuple(documents),
        namespace_labels=MappingProxyType(
            {ns: frozen_map(labels) for ns, labels in namespace_labels.items()}
        ),
        sources=tuple(sources),
    )
    return Assembly(config, met)
