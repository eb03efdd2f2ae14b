"""EnterpriseAgentgatewayParameters (`modelCatalog`), ConfigMaps, and the catalog format."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from types import MappingProxyType

from extproc.catalog.model import CatalogDocument, UserRates, UserTier
from extproc.config.documents import Map, Node, Scalar, describe, is_null, join, text_tree
from extproc.config.fields import Reporter
from extproc.config.kinds.base import CatalogRef, ConfigMapData, Fragment, Meta
from extproc.config.kinds.budgets import MAX_TOKENS

__all__ = [
    "catalog_document",
    "catalog_text",
    "parse_config_map",
    "parse_parameters",
    "resolve_catalogs",
]

_EXPECTED = "a catalog with providers"

_RATE_FIELDS = {
    "input": "input",
    "output": "output",
    "cacheRead": "cache_read",
    "cacheWrite": "cache_write",
    "reasoning": "reasoning",
}
_REQUIRED_RATES = ("input", "output")
_TIERS = "tiers"
_TIER_THRESHOLD = "inputTokensAbove"
_TIER_FIELDS = (_TIER_THRESHOLD, *_RATE_FIELDS)


def parse_parameters(r: Reporter, doc: Map, meta: Meta, out: Fragment) -> None:
    """Parameters name the ConfigMaps that hold catalogs, in the order they layer."""
    # Parameters also configure the proxy's Deployment and more: only the catalog is ours.
    spec = doc.fields.get("spec")
    catalog = spec.fields.get("modelCatalog") if isinstance(spec, Map) else None
    if catalog is None or is_null(catalog):
        return
    path = "spec.modelCatalog"
    sources = r.sequence(r.get(r.mapping(catalog, path), "sources", path, required=True), f"{path}.sources")
    for i, item in enumerate(sources.items if sources else ()):
        source_path = f"{path}.sources[{i}]"
        source = r.mapping(item, source_path)
        r.only(source, source_path, ("configMap",))
        ref_path = f"{source_path}.configMap"
        ref = r.mapping(r.get(source, "configMap", source_path, required=True), ref_path)
        if ref is None:
            continue
        r.only(ref, ref_path, ("name", "key", "namespace"))
        name = r.string(r.get(ref, "name", ref_path, required=True), f"{ref_path}.name")
        key_node = r.get(ref, "key", ref_path, required=True)
        key = r.string(key_node, f"{ref_path}.key")
        ns_node = r.get(ref, "namespace", ref_path)
        namespace = meta.namespace if ns_node is None else r.string(ns_node, f"{ref_path}.namespace")
        if name and key and namespace and key_node:
            out.catalog_refs.append(CatalogRef(namespace, name, key, r, ref.line, key_node.line, ref_path))


def parse_config_map(r: Reporter, doc: Map, meta: Meta, out: Fragment) -> None:
    # Kept whole: whether a ConfigMap is a catalog is known only once every Parameters is read.
    data = r.mapping(r.get(doc, "data", ""), "data")
    out.config_map = ConfigMapData(data, r)


def catalog_document(r: Reporter, root: Node, source: str) -> CatalogDocument | None:
    """`{providers: {P: {models: {M: {rates: {...}}}}}}`, names lower-cased for lookup."""
    before = r.count()
    top = r.mapping(root, "")
    providers = r.mapping(r.get(top, "providers", "", required=True), "providers")
    if providers is None:
        return None
    result: dict[str, dict[str, UserRates]] = {}
    for provider_key, provider_node in providers.fields.items():
        provider_path = join("providers", provider_key)
        provider = provider_key.lower()
        if provider in result:
            r.add(providers.key_lines[provider_key], provider_path, "is listed twice (names ignore case)")
            continue
        models_path = f"{provider_path}.models"
        provider_map = r.mapping(provider_node, provider_path)
        models = r.mapping(r.get(provider_map, "models", provider_path, required=True), models_path)
        rates_by_model = result.setdefault(provider, {})
        if models is None:
            continue
        seen: set[str] = set()
        for model_key, model_node in models.fields.items():
            model_path = join(models_path, model_key)
            if model_key.lower() in seen:
                r.add(models.key_lines[model_key], model_path, "is listed twice (names ignore case)")
                continue
            seen.add(model_key.lower())
            model = r.mapping(model_node, model_path)
            rates = _rates(r, r.get(model, "rates", model_path, required=True), model_path)
            if rates is not None:
                rates_by_model[model_key.lower()] = rates
    if r.count() > before:
        return None
    frozen = {provider: MappingProxyType(models) for provider, models in result.items()}
    return CatalogDocument(source, MappingProxyType(frozen))


def _rates(r: Reporter, node: Node | None, model_path: str) -> UserRates | None:
    path = f"{model_path}.rates"
    rates = r.mapping(node, path)
    if rates is None:
        return None
    r.only(rates, path, [*_RATE_FIELDS, _TIERS])
    before = r.count()
    values = _rate_values(r, rates, path)
    tiers = _tiers(r, r.get(rates, _TIERS, path), join(path, _TIERS))
    if r.count() > before:
        return None
    return UserRates(
        input=values["input"],
        output=values["output"],
        cache_read=values.get("cache_read"),
        cache_write=values.get("cache_write"),
        reasoning=values.get("reasoning"),
        tiers=tiers,
    )


def _rate_values(r: Reporter, rates: Map, path: str) -> dict[str, Decimal]:
    """The rates stated in `rates`, by attribute name; the caller counts problems."""
    values: dict[str, Decimal] = {}
    for name, attribute in _RATE_FIELDS.items():
        rate_node = r.get(rates, name, path, required=name in _REQUIRED_RATES)
        rate = r.decimal(rate_node, join(path, name))
        if rate is None or rate_node is None:
            continue
        if rate < 0:
            r.add(rate_node.line, join(path, name), f"a rate must not be negative, got {rate:f}")
        values[attribute] = rate
    return values


def _tiers(r: Reporter, node: Node | None, path: str) -> tuple[UserTier, ...]:
    """Long-context tiers, sorted by threshold; each states its own input and output."""
    items = r.sequence(node, path)
    if items is None:
        return ()
    tiers: list[UserTier] = []
    first: dict[int, str] = {}  # threshold -> the path of the tier that set it first
    for i, item in enumerate(items.items):
        item_path = f"{path}[{i}]"
        tier = r.mapping(item, item_path)
        if tier is None:
            continue
        r.only(tier, item_path, _TIER_FIELDS)
        before = r.count()
        threshold_node = r.get(tier, _TIER_THRESHOLD, item_path, required=True)
        threshold = _threshold(r, threshold_node, join(item_path, _TIER_THRESHOLD))
        values = _rate_values(r, tier, item_path)
        if threshold is not None and threshold_node is not None:
            if threshold in first:
                # Two prices for the same calls: which was meant cannot be guessed.
                r.add(
                    threshold_node.line,
                    join(item_path, _TIER_THRESHOLD),
                    f"{threshold} is already the threshold of {first[threshold]}",
                )
            else:
                first[threshold] = item_path
        if threshold is not None and r.count() == before:
            tiers.append(UserTier(threshold, **values))
    return tuple(sorted(tiers, key=lambda tier: tier.input_tokens_above))


def _threshold(r: Reporter, node: Node | None, path: str) -> int | None:
    number = r.decimal(node, path)
    if number is None or node is None:
        return None
    if number != number.to_integral_value() or number <= 0:
        r.add(node.line, path, f"must be a positive whole number of input tokens, got {number:f}")
        return None
    if number > MAX_TOKENS:  # checked before int(), which `1e999999999` would make huge
        r.add(node.line, path, f"is at most {MAX_TOKENS} (2^32-1), got {number:f}")
        return None
    return int(number)


def catalog_text(r: Reporter, text: str, source: str) -> CatalogDocument | None:
    """A `--catalog` file's text as a catalog document; None when a problem was reported."""
    tree = text_tree(r, text, None, _EXPECTED)
    return catalog_document(r, tree, source) if tree is not None else None


def resolve_catalogs(
    refs: Sequence[CatalogRef],
    config_maps: Mapping[tuple[str, str], ConfigMapData],
    report_of: Callable[[Reporter], Reporter] = lambda own: own,
) -> list[CatalogDocument]:
    """The ConfigMaps that Parameters resources name, parsed as catalogs in the order named.

    A problem with a reference goes to the Parameters that made it; a problem inside the
    catalog text goes to the ConfigMap that holds it. `report_of` maps a resource's own
    reporter to where such problems go (parsed resources are kept and must not change).
    """
    documents: list[CatalogDocument] = []
    seen: set[str] = set()
    for ref in refs:
        source = f"{ref.namespace}/{ref.name}:{ref.key}"
        if source in seen:
            continue
        seen.add(source)
        config_map = config_maps.get((ref.namespace, ref.name))
        if config_map is None:
            report_of(ref.report).add(
                ref.line, ref.path, f'ConfigMap "{ref.namespace}/{ref.name}" is not in the configuration'
            )
            continue
        value = config_map.data.fields.get(ref.key) if config_map.data else None
        if value is None:
            report_of(ref.report).add(
                ref.key_line,
                f"{ref.path}.key",
                f'ConfigMap "{ref.namespace}/{ref.name}" has no key "{ref.key}"',
            )
            continue
        data_path = f"data.{ref.key}"
        if not isinstance(value, Scalar) or not isinstance(value.value, str):
            report_of(config_map.report).add(
                value.line, data_path, f"must be the catalog as JSON or YAML text, got {describe(value)}"
            )
            continue
        report = report_of(config_map.report).nested(data_path, ": ")
        tree = text_tree(report, value.value, value.line, _EXPECTED)
        document = catalog_document(report, tree, source) if tree is not None else None
        if document is not None:
            documents.append(document)
    return documents
