"""The model cost catalog: user documents layered over genai-prices, and exact pricing.

A model name resolves once to an entry (its rates and the status of the lookup) and the
result is cached, so pricing a response is a dict lookup plus a few integer products.
Money never touches a float: rates are Decimals, held as scaled integers; costs come out
as exact Decimals, and the integer `nanos` rounds up so stored spend never under-counts.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from types import MappingProxyType
from typing import Protocol, TypeAlias

from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, ModelPrice, Provider, TieredPrices

from extproc.catalog.model import CatalogDocument, UserRates, UserTier
from extproc.usage.model import Usage

__all__ = ["Catalog", "LookupStatus", "Price", "Rates", "components_text", "format_usd"]

# Costs are summed as integers and only turned into a Decimal by moving the decimal
# point, which this context can always do exactly (the default 28 digits could round).
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
_ZERO = Decimal(0)
_MTOK_DIGITS = 6  # rates are USD per 1M tokens
_NANO_DIGITS = 9  # stored spend is in billionths of a USD

# Model names reach us from request bodies, so a client can invent any number of them;
# the cache (misses included) is cleared when it reaches this size to bound memory.
_CACHE_LIMIT = 4096

# A dated release prices as its undated catalog entry (`gpt-4o-2024-08-06` -> `gpt-4o`).
# `-latest` is an alias of the newest dated release, so it prices as the base name too.
_RELEASE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")

# Our provider names where genai-prices' own alias matching would pick the wrong one
# (it reads `azure_openai` as `openai`); anything else is passed through for it to match.
_BUILTIN_PROVIDER_IDS: Mapping[str, str] = {
    "azure": "azure",
    "azure_openai": "azure",
    "azure-openai": "azure",
    "aws": "aws",
    "bedrock": "aws",
    "gemini": "google",
    "google": "google",
    "vertex": "google",
    "vertex_ai": "google",
}

_COMPONENTS = ("input", "cached_input", "cache_write", "output", "reasoning")
_ZERO_COMPONENTS: Mapping[str, Decimal] = MappingProxyType(dict.fromkeys(_COMPONENTS, _ZERO))


class LookupStatus(enum.Enum):
    """How a model's price was found: a closed vocabulary that telemetry reports."""

    EXACT = "exact"  # a user catalog entry
    BUILTIN = "builtin"  # the genai-prices data bundled with the package
    UNPRICED = "unpriced"  # a model named but known nowhere: priced at $0
    MISSING = "missing"  # no model name at all


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per 1M tokens, every rate filled in.

    `tiers` holds long-context prices: `(threshold, rates)` ascending, where `rates`
    apply to the whole call once its input tokens exceed `threshold` (the cliff model
    Anthropic and Google bill by, as genai-prices' TieredPrices). A tier's own rates
    have no tiers.
    """

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    reasoning: Decimal
    tiers: tuple[tuple[int, Rates], ...] = ()
    # The five rates as integers over a common power of ten, so pricing a call is integer
    # arithmetic: (scale, (input, output, cache_read, cache_write, reasoning)).
    _scaled: tuple[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rates = (self.input, self.output, self.cache_read, self.cache_write, self.reasoning)
        for rate in rates:
            if not rate.is_finite() or rate < 0:
                raise ValueError(f"a rate must be a finite non-negative decimal, not {rate}")
        scale = max(0, *(-int(rate.as_tuple().exponent) for rate in rates))
        object.__setattr__(self, "_scaled", (scale, tuple(_scaled_int(rate, scale) for rate in rates)))
        # for_input walks the tiers from the top, so their order is what makes it right.
        previous = -1
        for threshold, tier in self.tiers:
            if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= previous:
                raise ValueError(
                    f"tier thresholds must be distinct ascending integers >= 0, not {threshold!r}"
                )
            if tier.tiers:
                raise ValueError("a tier's rates cannot have tiers of their own")
            previous = threshold

    @classmethod
    def from_user(cls, rates: UserRates) -> Rates:
        """Fill omitted rates so as never to under-count: cache at input, reasoning at output.

        A tier's omitted rates fall back to that tier's own input and output, not to the
        base rates: a long-context cache read is never priced below long-context input
        unless the catalog says so.
        """
        base = _filled(rates)
        tiers = tuple(
            (tier.input_tokens_above, _filled(tier))
            for tier in sorted(rates.tiers, key=lambda tier: tier.input_tokens_above)
        )
        return cls(base.input, base.output, base.cache_read, base.cache_write, base.reasoning, tiers)

    def for_input(self, input_tokens: int) -> Rates:
        """The rates that apply to a call with this many input tokens (cached ones included)."""
        for threshold, rates in reversed(self.tiers):
            if input_tokens > threshold:
                return rates
        return self


def _filled(rates: UserRates | UserTier) -> Rates:
    return Rates(
        input=rates.input,
        output=rates.output,
        cache_read=rates.input if rates.cache_read is None else rates.cache_read,
        cache_write=rates.input if rates.cache_write is None else rates.cache_write,
        reasoning=rates.output if rates.reasoning is None else rates.reasoning,
    )


def _zero_components() -> Mapping[str, Decimal]:
    return _ZERO_COMPONENTS


@dataclass(frozen=True, slots=True)
class Price:
    """The cost of one call and where its rates came from.

    `usd` is exact and unrounded; `nanos` is `usd` in billionths rounded up, the integer
    the spend store adds. `provider` and `model` name the catalog entry matched (None
    when nothing matched). `components` splits `usd` exactly, each at the rate of the
    tier that applied: `input` (input neither read from nor written to the cache),
    `cached_input` (cache reads), `cache_write`, `output` (output other than reasoning)
    and `reasoning`; they sum to `usd` exactly.
    """

    usd: Decimal
    nanos: int
    status: LookupStatus
    provider: str | None = None
    model: str | None = None
    components: Mapping[str, Decimal] = field(default_factory=_zero_components, hash=False)


class _Constraint(Protocol):
    """genai-prices' date and time-of-day price constraints."""

    def active(self, request_timestamp: datetime) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    """A resolved lookup, cached per (provider, model)."""

    status: LookupStatus
    provider: str | None
    model: str | None
    # genai-prices changes some prices on a date or by time of day (DeepSeek's off-peak
    # discount), so a built-in entry keeps the whole schedule and picks at pricing time:
    # the last entry whose constraint is active wins, as in genai-prices.
    schedule: tuple[tuple[_Constraint | None, Rates], ...] = ()

    def rates_at(self, at: datetime | None) -> Rates | None:
        if not self.schedule:
            return None
        if len(self.schedule) == 1:
            return self.schedule[0][1]
        when = at if at is not None else datetime.now(UTC)
        for constraint, rates in reversed(self.schedule):
            if constraint is None or constraint.active(when):
                return rates
        return self.schedule[0][1]


_MISSING = _Entry(LookupStatus.MISSING, None, None)
_UNPRICED = _Entry(LookupStatus.UNPRICED, None, None)


class Catalog:
    """Per-model rates from user catalog documents, then genai-prices.

    Documents layer in order and the later wins per (provider, model); a user entry
    replaces the built-in one whole. Lookups are cached, misses included, so each model
    is resolved once. Safe to share between threads: the cache is a plain dict whose
    single reads and writes are atomic, and a race only resolves a model twice.
    """

    def __init__(self, documents: Sequence[CatalogDocument] = (), *, builtin: bool = True) -> None:
        self._builtin = builtin
        # provider -> model -> rates, in the order providers first appear.
        self._user: dict[str, dict[str, Rates]] = {}
        for document in documents:
            for provider, models in document.providers.items():
                layer = self._user.setdefault(provider.strip().lower(), {})
                for model, rates in models.items():
                    layer[model.strip().lower()] = Rates.from_user(rates)
        self._user = {provider: models for provider, models in self._user.items() if models}
        # model -> (provider, rates) of the first provider listing it, for lookups with no provider.
        self._user_any: dict[str, tuple[str, Rates]] = {}
        for provider, models in self._user.items():
            for model, rates in models.items():
                self._user_any.setdefault(model, (provider, rates))
        self._cache: dict[tuple[str | None, str], _Entry] = {}
        if builtin:
            # Load the bundled price data now (tens of ms) rather than on the first request.
            data_snapshot.get_snapshot()

    @property
    def summary(self) -> tuple[int, int]:
        """Providers and models in the user documents, for the startup log line."""
        return len(self._user), sum(len(models) for models in self._user.values())

    def knows_provider(self, provider: str) -> bool:
        """Whether a provider name means anything here: in a user document or genai-prices."""
        name = provider.strip().lower()
        if name in self._user:
            return True
        if not self._builtin:
            return False
        known = data_snapshot.get_snapshot().providers
        return data_snapshot.find_provider_by_id(known, _BUILTIN_PROVIDER_IDS.get(name, name)) is not None

    def rates(
        self, model: str | None, provider: str | None = None, *, at: datetime | None = None
    ) -> tuple[Rates | None, LookupStatus, str | None, str | None]:
        """The rates for a model, the lookup status, and the provider and model matched.

        `at` (timezone-aware, default now) picks among built-in prices that change by
        date or time of day.
        """
        entry = self._entry(model, provider)
        return entry.rates_at(at), entry.status, entry.provider, entry.model

    def price(
        self, usage: Usage, model: str | None, provider: str | None = None, *, at: datetime | None = None
    ) -> Price:
        """The exact cost of a call's usage; an unknown or missing model costs $0."""
        entry = self._entry(model, provider)
        rates = entry.rates_at(at)
        if rates is None:
            return Price(_ZERO, 0, entry.status, entry.provider, entry.model, _ZERO_COMPONENTS)
        return _priced(usage, rates, entry)

    def nanos(self, usage: Usage, model: str | None, provider: str | None = None) -> int:
        """`price(...).nanos` alone (a hold's estimate): no Decimal parts are made."""
        rates = self._entry(model, provider).rates_at(None)
        return 0 if rates is None else _total_nanos(usage, rates)[2]

    def _entry(self, model: str | None, provider: str | None) -> _Entry:
        name = model.strip().lower() if model else ""
        if not name:
            return _MISSING
        scope = (provider.strip().lower() or None) if provider else None
        key = (scope, name)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._resolve(name, scope)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = entry
        return entry

    def _resolve(self, name: str, provider: str | None) -> _Entry:
        undated = _RELEASE_SUFFIX.sub("", name)
        names = (name,) if undated == name else (name, undated)
        for candidate in names:
            found = self._find_user(candidate, provider)
            if found is not None:
                return _Entry(LookupStatus.EXACT, found[0], candidate, ((None, found[1]),))
        if self._builtin:
            snapshot = data_snapshot.get_snapshot()
            for candidate in names:
                entry = _find_builtin(snapshot, candidate, provider)
                if entry is not None:
                    return entry
        return _UNPRICED

    def _find_user(self, name: str, provider: str | None) -> tuple[str, Rates] | None:
        if provider is None:
            return self._user_any.get(name)
        rates = self._user.get(provider, {}).get(name)
        return None if rates is None else (provider, rates)


def _scaled_int(rate: Decimal, scale: int) -> int:
    """`rate * 10**scale` as an exact integer; `scale` covers all of the rate's decimals."""
    sign, digits, exponent = rate.as_tuple()
    value = int("".join(map(str, digits))) * 10 ** (int(exponent) + scale)
    return -value if sign else value


def _usd(amount: int, digits: int) -> Decimal:
    """`amount * 10**-digits` USD, exactly."""
    return _ZERO if amount == 0 else Decimal(amount).scaleb(-digits, _EXACT)


def _priced(usage: Usage, rates: Rates, entry: _Entry) -> Price:
    parts, total, nanos, digits = _total_nanos(usage, rates)
    components = MappingProxyType(
        {name: _usd(part, digits) for name, part in zip(_COMPONENTS, parts, strict=True)}
    )
    return Price(_usd(total, digits), nanos, entry.status, entry.provider, entry.model, components)


def _total_nanos(usage: Usage, rates: Rates) -> tuple[tuple[int, ...], int, int, int]:
    """The parts and their total (in 10**-digits USD), the total in nano-USD rounded up,
    and digits."""
    # Clamp defensively: a parser's inconsistent counts must not make spend negative.
    input_tokens = max(usage.input_tokens, 0)
    cached = max(usage.cached_input_tokens, 0)
    written = max(usage.cache_creation_input_tokens, 0)
    output = max(usage.output_tokens, 0)
    reasoning = max(usage.reasoning_tokens, 0)
    scale, (input_rate, output_rate, read_rate, write_rate, reasoning_rate) = rates.for_input(
        input_tokens
    )._scaled

    # Each part is in units of 10**-(scale + 6) USD: tokens times rate per million.
    parts = (
        max(input_tokens - cached - written, 0) * input_rate,
        cached * read_rate,
        written * write_rate,
        max(output - reasoning, 0) * output_rate,
        reasoning * reasoning_rate,
    )
    total = sum(parts)
    digits = scale + _MTOK_DIGITS
    if digits > _NANO_DIGITS:
        nanos = -(-total // 10 ** (digits - _NANO_DIGITS))  # ceiling division: never under-count
    else:
        nanos = total * 10 ** (_NANO_DIGITS - digits)
    return parts, total, nanos, digits


def _find_builtin(snapshot: data_snapshot.DataSnapshot, name: str, provider: str | None) -> _Entry | None:
    """Look a model up in genai-prices, within `provider` first, then across all providers.

    This walks the snapshot itself rather than calling `DataSnapshot.find_provider_model`,
    which memoises every name it is asked about, misses included, in unbounded sets: a
    client inventing model names would grow them forever. Our own cache is bounded.
    """
    scopes: tuple[str | None, ...] = (None,)
    if provider is not None:
        scopes = (_BUILTIN_PROVIDER_IDS.get(provider, provider), None)
    for scope in scopes:
        found = _find_provider_model(snapshot, name, scope)
        if found is not None:
            owner, info = found
            schedule = _schedule(info)
            if not schedule:
                return None  # priced by characters, pages or requests: nothing to price tokens by
            return _Entry(LookupStatus.BUILTIN, owner.id, info.id, schedule)
    return None


def _find_provider_model(
    snapshot: data_snapshot.DataSnapshot, name: str, provider_id: str | None
) -> tuple[Provider, ModelInfo] | None:
    # The same search as genai-prices' find_provider / find_provider_model, uncached.
    owner: Provider | None
    if provider_id is not None:
        owner = data_snapshot.find_provider_by_id(snapshot.providers, provider_id)
    else:
        owner = next(
            (p for p in snapshot.providers if p.model_match is not None and p.model_match.is_match(name)),
            None,
        )
    if owner is None:
        return None
    info = owner.find_model(name, all_providers=snapshot.providers)
    return None if info is None else (owner, info)


def _schedule(info: ModelInfo) -> tuple[tuple[_Constraint | None, Rates], ...]:
    if isinstance(info.prices, ModelPrice):
        rates = _builtin_rates(info.prices)
        return () if rates is None else ((None, rates),)
    schedule: list[tuple[_Constraint | None, Rates]] = []
    for conditional in info.prices:
        rates = _builtin_rates(conditional.prices)
        if rates is not None:
            schedule.append((conditional.constraint, rates))
    return tuple(schedule)


# genai-prices keys for our five rates; it has no reasoning rate for most models.
_BUILTIN_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "output_reasoning_mtok")

_BuiltinPrice: TypeAlias = Decimal | TieredPrices | None


def _builtin_rates(prices: ModelPrice) -> Rates | None:
    """Rates from a genai-prices price set, with its per-rate tiers merged into whole-call tiers.

    Anthropic's 1-hour cache writes (`cache_write_1h_mtok`) are not used: usage does not
    say which writes were 1-hour ones, so every write prices at the default 5-minute rate.
    """
    raw: tuple[_BuiltinPrice, ...] = tuple(getattr(prices, key, None) for key in _BUILTIN_KEYS)
    if raw[0] is None and raw[1] is None:
        return None
    tiered = (value for value in raw if isinstance(value, TieredPrices))
    thresholds = sorted({tier.start for value in tiered for tier in value.tiers})
    # Every rate is constant between consecutive thresholds, so one sample above each suffices.
    tiers = tuple((threshold, _rates_above(raw, threshold + 1)) for threshold in thresholds)
    base = _rates_above(raw, 0)
    return Rates(base.input, base.output, base.cache_read, base.cache_write, base.reasoning, tiers)


def _rates_above(raw: tuple[_BuiltinPrice, ...], input_tokens: int) -> Rates:
    input_rate, output, cache_read, cache_write, reasoning = (_at(value, input_tokens) for value in raw)
    input_rate = _ZERO if input_rate is None else input_rate
    output = _ZERO if output is None else output
    return Rates(
        input=input_rate,
        output=output,
        cache_read=input_rate if cache_read is None else cache_read,
        cache_write=input_rate if cache_write is None else cache_write,
        reasoning=output if reasoning is None else reasoning,
    )


def _at(value: _BuiltinPrice, input_tokens: int) -> Decimal | None:
    if not isinstance(value, TieredPrices):
        return value
    for tier in reversed(value.tiers):  # genai-prices keeps tiers sorted by start
        if input_tokens > tier.start:
            return tier.price
    return value.base


def components_text(price: Price) -> dict[str, str]:
    """The non-zero cost components as plain decimal strings, for the per-request log line.

    Zero ones are left out so that a plain chat call logs just `input` and `output`.
    """
    return {name: format_usd(amount) for name, amount in price.components.items() if amount}


def format_usd(amount: Decimal) -> str:
    """A plain decimal string with no exponent or trailing zeros: 0.0068825, 5, 0."""
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text
