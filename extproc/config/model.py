"""The configuration, parsed once into frozen, typed objects.

Everything downstream (matching, admission, accounting) reads these and never
re-validates: the loader is the only place that turns YAML into them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from extproc.catalog.model import CatalogDocument


class Unit(enum.Enum):
    USD = "USD"
    TOKENS = "Tokens"

    @property
    def telemetry(self) -> str:
        return "USD" if self is Unit.USD else "TOKENS"


class Window(enum.Enum):
    """Trailing windows, never calendar-aligned (SPEC §5)."""

    DAY = "Day"
    WEEK = "Week"
    MONTH = "Month"
    YEAR = "Year"

    @property
    def seconds(self) -> int:
        return _WINDOW_SECONDS[self]

    @property
    def telemetry(self) -> str:
        return _WINDOW_TELEMETRY[self]


_WINDOW_SECONDS = {
    Window.DAY: 86_400,
    Window.WEEK: 7 * 86_400,
    Window.MONTH: 30 * 86_400,
    Window.YEAR: 365 * 86_400,
}
_WINDOW_TELEMETRY = {
    Window.DAY: "DAILY",
    Window.WEEK: "WEEKLY",
    Window.MONTH: "MONTHLY",
    Window.YEAR: "YEARLY",
}


class Action(enum.Enum):
    AUDIT = "Audit"
    BLOCK = "Block"

    @property
    def telemetry(self) -> str:
        return self.value.upper()


class DiscoveryMode(enum.Enum):
    SAME = "Same"
    SELECTOR = "Selector"
    ALL = "All"


class FailureMode(enum.Enum):
    """What admission does when the spend store is unreachable."""

    OPEN = "Open"
    CLOSED = "Closed"


WILDCARD = "*"


def frozen_map(d: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True, slots=True)
class BudgetEntry:
    """One entry of a Budget resource: a limit over a trailing window for a subject."""

    namespace: str
    resource: str
    name: str
    unit: Unit
    # USD limits are kept as an exact Decimal; tokens as an integral Decimal.
    amount: Decimal
    window: Window
    action: Action
    subject: Mapping[str, str] = field(default_factory=frozen_map)
    # Percentages of the limit whose crossing is notified (`notifyAt`); () for the sidecar's
    # --notify-thresholds.
    notify_at: tuple[int, ...] = ()

    @property
    def budget_id(self) -> str:
        """`namespace/resource/entry`, the id telemetry reports."""
        return f"{self.namespace}/{self.resource}/{self.name}"

    @property
    def limit_units(self) -> int:
        """The limit in store units: nano-USD for USD entries, tokens for token entries."""
        if self.unit is Unit.USD:
            return int(self.amount * NANOS_PER_USD)
        return int(self.amount)


NANOS_PER_USD = 1_000_000_000


@dataclass(frozen=True, slots=True)
class BudgetResource:
    """A Budget (or EnterpriseAgentgatewayBudget) resource: a namespaced list of entries."""

    namespace: str
    name: str
    entries: tuple[BudgetEntry, ...]
    labels: Mapping[str, str] = field(default_factory=frozen_map)


@dataclass(frozen=True, slots=True)
class TargetRef:
    """A policy target: an HTTPRoute (matched by route name) or a Gateway (every route)."""

    kind: str  # "HTTPRoute" or "Gateway"
    name: str
    namespace: str


# Every `api` a policy may name: the parsers `extproc.usage.apis` registers.


@dataclass(frozen=True, slots=True)
class EnforcementPolicy:
    """An EnterpriseAgentgatewayPolicy with entBudgetEnforcement, or a BudgetPolicy.

    `provider` and `api`, when set, override what the request path says for the routes
    the policy targets: a self-hosted OpenAI-compatible server priced as "openai", a
    path no pattern recognises read as "openai.chat". `estimate_usage` asks for a
    response without usage to be estimated from body sizes rather than left unpriced.
    """

    namespace: str
    name: str
    target_refs: tuple[TargetRef, ...]
    discovery: DiscoveryMode = DiscoveryMode.SAME
    # matchLabels for DiscoveryMode.SELECTOR
    selector: Mapping[str, str] = field(default_factory=frozen_map)
    failure_mode: FailureMode = FailureMode.OPEN
    # The catalog provider, lower-case (also the built-in `provider` dimension's value).
    provider: str | None = None
    # One of extproc.usage.apis.API_NAMES.
    api: str | None = None
    estimate_usage: bool = False
    # The IETF RateLimit fields on admitted responses (a blocked one always has them).
    rate_limit_headers: bool = True


class DimensionSource(enum.Enum):
    HEADER = "header"
    METADATA = "metadata"
    ATTRIBUTE = "attribute"
    BODY = "body"
    API_KEY = "apiKey"


# The headers an API key may arrive in: OpenAI/Anthropic-style bearer tokens, Anthropic's
# and many gateways' `x-api-key`, Azure OpenAI's `api-key`, Gemini's `x-goog-api-key`.
API_KEY_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


@dataclass(frozen=True, slots=True)
class Dimension:
    """How one subject key resolves per request."""

    key: str
    source: DimensionSource
    # header: the lower-case header name; attribute: the attribute name;
    # metadata: the filter-metadata namespace; apiKey: the lower-case header the key is
    # read from (one of API_KEY_HEADERS); body: unused ("").
    name: str
    # metadata: the path inside that namespace's struct; body: the path inside the JSON body.
    path: tuple[str, ...] = ()
    # When set, a string value is split on it into several values (`x-groups: eng, ml`);
    # otherwise a header value with commas is one value. Never set for apiKey.
    split: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration of one sidecar."""

    budgets: tuple[BudgetResource, ...] = ()
    policies: tuple[EnforcementPolicy, ...] = ()
    dimensions: Mapping[str, Dimension] = field(default_factory=lambda: MappingProxyType({}))
    # Catalog documents in the order they layer (later wins), from ConfigMaps that a
    # Parameters resource names and from --catalog files.
    catalogs: tuple[CatalogDocument, ...] = ()
    # namespace name -> labels, from Namespace manifests (for DiscoveryMode.SELECTOR)
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    sources: tuple[str, ...] = ()
