"""The model cost catalog: what a call's tokens cost, and where that price came from."""

from extproc.catalog.catalog import Catalog, LookupStatus, Price, Rates, components_text, format_usd
from extproc.catalog.model import CatalogDocument, UserRates, UserTier

__all__ = [
    "Catalog",
    "CatalogDocument",
    "LookupStatus",
    "Price",
    "Rates",
    "UserRates",
    "UserTier",
    "components_text",
    "format_usd",
]
