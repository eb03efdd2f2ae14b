"""The catalog's data: per-model rates in USD per 1M tokens, as exact Decimals."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class UserTier:
    """A long-context price tier as a user's catalog states it; omitted rates are None.

    Its rates replace the base rates for the whole call once the call's input tokens
    (cached ones included) exceed `input_tokens_above`: the cliff model of genai-prices'
    TieredPrices, which Anthropic and Google bill by.
    """

    input_tokens_above: int
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None


@dataclass(frozen=True, slots=True)
class UserRates:
    """Rates as a user's catalog states them; omitted ones are None.

    `tiers` are long-context prices, ascending by threshold (the loader sorts them).
    """

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    tiers: tuple[UserTier, ...] = ()


@dataclass(frozen=True, slots=True)
class CatalogDocument:
    """One catalog source (a ConfigMap key or a --catalog file): provider -> model -> rates."""

    source: str
    providers: Mapping[str, Mapping[str, UserRates]]
