"""The catalog's data: per-model rates in USD per 1M tokens, as exact Decimals."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class UserRates:
    """Rates as a user's catalog states them; omitted ones are None."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None


@dataclass(frozen=True, slots=True)
class CatalogDocument:
    """One catalog source (a ConfigMap key or a --catalog file): provider -> model -> rates."""

    source: str
    providers: Mapping[str, Mapping[str, UserRates]]
