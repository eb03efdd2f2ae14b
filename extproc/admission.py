"""The admission core: what a request may spend and what it spent, as plain data.

Nothing here knows Envoy or protobuf. `Enforcer.admit` takes a request's `RouteContext`
and what its body said, and decides: `Admission` (with the holds placed), `Blocked` (the
entry and counter that said no) or `Unavailable` (the store did not answer and the route
fails closed). `Enforcer.account` takes what the response showed (`Reading`) and records
the spend, releasing the holds. The ext_proc adapter (`extproc.envoy.service`) turns
messages into these calls and decisions into replies.

The route's failure mode has one owner: it goes with each admission to the store, which
admits on its local view when the route fails open (`AdmitResult.local`).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

from extproc import budgets
from extproc.budgets import BudgetIndex, Charge, RouteBudgets
from extproc.catalog import Catalog, LookupStatus, Price, components_text, format_usd
from extproc.config.model import Action, Config, FailureMode, Unit
from extproc.dimensions import DimensionValue, resolve
from extproc.store import Claim, Counter, CounterState, SpendStore, StoreUnavailable
from extproc.store.windows import bucket_seconds_for
from extproc.telemetry import Metrics, log, logs_info
from extproc.usage import LlmRequest, Usage
from extproc.usage.api import ApiCall
from extproc.usage.response import Reading


@dataclass(frozen=True, slots=True)
class Settings:
    """Service knobs that are not budgets."""

    # How long a hold outlives its request at most (a crashed replica's holds expire).
    hold_lease_seconds: int = 300
    # Output tokens a hold assumes when the request names no max_tokens.
    default_output_hold_tokens: int = 1024
    # Ask Envoy for the response headers too (four blocking messages a request, not three);
    # without it, an enforced request's usage is read from its response body alone.
    read_response_headers: bool = False


class Snapshot:
    """One configuration, with everything derived from it once: the index and the catalog."""

    def __init__(self, config: Config, catalog: Catalog | None = None) -> None:
        self.config = config
        self.index = BudgetIndex(config)
        self.catalog = catalog if catalog is not None else Catalog(config.catalogs)
        # Each charge's counter, made once per counter id under this configuration (a
        # limit edit is a new snapshot, so a cached counter never carries a stale limit).
        self._counters: dict[str, Counter] = {}

    def counter(self, charge: Charge) -> Counter:
        found = self._counters.get(charge.counter_id)
        if found is None:
            if len(self._counters) >= 65536:  # subjects come from requests: bounded
                self._counters.clear()
            found = self._counters[charge.counter_id] = counter_for(charge)
        return found


@dataclass(frozen=True, slots=True)
class RouteContext:
    """What a request's headers said, set once: the configuration it began under (a
    reload mid-request does not change what it is admitted against and charged to), its
    route and budgets, and what dimensions read."""

    snapshot: Snapshot
    route: str
    # The gateway the request came through, `NAMESPACE/NAME`; "" when Envoy did not say.
    gateway: str
    budgets: RouteBudgets
    headers: Mapping[str, str]
    attributes: Mapping[str, str]
    metadata: Mapping[str, Any]
    # What the path (or the route's policy) says the call is; None: no parser reads it.
    call: ApiCall | None
    provider: str
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Quota:
    """One entry as a client may be told of it (the IETF RateLimit fields): what is left
    after this request's hold, and in how many seconds it is whole again at most."""

    charge: Charge
    remaining: int
    reset_seconds: int


@dataclass(slots=True)
class Admission:
    """An admitted request: the entries it is charged to, each counter's hold, and
    whether the store still holds them (until the record or the release)."""

    request: LlmRequest
    charges: tuple[Charge, ...] = ()
    holds: tuple[Claim, ...] = ()
    hold_id: str = ""
    holding: bool = False
    # The entry with the least of its limit left (blocking entries first), when asked for.
    quota: Quota | None = None

    @property
    def budget_ids(self) -> list[str]:
        return [charge.entry.budget_id for charge in self.charges]

    @property
    def subject(self) -> dict[str, str]:
        """The dimension values the charged entries name (what spend per team is rebuilt from)."""
        return {key: value for charge in self.charges for key, value in charge.values}


@dataclass(frozen=True, slots=True)
class Blocked:
    """Rejected: the blocking entry whose counter frees up last, as admission saw it."""

    charge: Charge
    state: CounterState


@dataclass(frozen=True, slots=True)
class BlockedRequest:
    """A request answered 429, as the spend page lists it."""

    at: float
    budget_id: str
    subject: str
    route: str


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The store did not answer and the route's failure mode is Closed."""


Decision = Admission | Blocked | Unavailable
RECENT_BLOCKS = 50
UNAVAILABLE = Unavailable()


@dataclass(frozen=True, slots=True)
class Spend:
    """What an exchange was charged."""

    usage: Usage
    price: Price
    model: str | None
    estimated: bool


class Enforcer:
    def __init__(self, store: SpendStore, metrics: Metrics, settings: Settings | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings or Settings()
        # Hold ids unique across replicas without a random draw (a syscall) per request.
        self._hold_prefix = secrets.token_hex(8)
        self._hold_seq = itertools.count(1)
        # The latest blocked requests, newest last (the spend page shows them).
        self.recent_blocks: deque[BlockedRequest] = deque(maxlen=RECENT_BLOCKS)
        # Records whose round trip goes after the reply (the drain awaits them: `settle`).
        self._recording: set[asyncio.Task[None]] = set()

    async def settle(self) -> None:
        """Every record made after its reply has been sent (a drain, before the store closes)."""
        while self._recording:
            await asyncio.gather(*list(self._recording), return_exceptions=True)

    # -- admission ------------------------------------------------------------------

    def match(
        self, ctx: RouteContext, request: LlmRequest, body: bytes = b""
    ) -> tuple[dict[str, DimensionValue], tuple[Charge, ...]]:
        """The request's dimensions (`body`: as the client sent it, for body dimensions)
        and the entries they match, one charge per entry and subject."""
        dims = resolve(
            ctx.snapshot.config.dimensions,
            headers=ctx.headers,
            metadata=ctx.metadata,
            attributes=ctx.attributes,
            builtins={"model": request.model, "provider": ctx.provider, "route": ctx.route},
            body=body,
        )
        matching = ctx.budgets.match(dims)
        if matching.capped:
            log.warning(
                "subject combinations capped",
                route=ctx.route,
                budget_ids=list(matching.capped),
                charged_per_entry=budgets.MAX_COMBINATIONS,
            )
        return dims, tuple(matching.charges)

    async def admit(self, ctx: RouteContext, request: LlmRequest, body: bytes = b"") -> Decision:
        """Match the entries and ask the store to hold their estimates."""
        _, charges = self.match(ctx, request, body)
        if not charges:
            return Admission(request)
        hold_id = f"{self._hold_prefix}{next(self._hold_seq):x}"
        admission = Admission(request, charges, self.holds(ctx, charges, request), hold_id)
        fail_open = ctx.budgets.failure_mode is FailureMode.OPEN
        t0 = time.perf_counter()
        try:
            result = await self.store.admit(
                admission.holds,
                admission.hold_id,
                self.settings.hold_lease_seconds,
                time.time(),
                fail_open=fail_open,
            )
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("admit").inc()
            if not fail_open:
                log.error("spend store unavailable; rejecting", route=ctx.route, error=str(exc))
                self.metrics.requests.labels(ctx.route, "store_unavailable").inc()
                return UNAVAILABLE
            log.warning(
                "spend store unavailable; admitting (failure mode Open)", route=ctx.route, error=str(exc)
            )
            return admission
        finally:
            self.metrics.admission_seconds.observe(time.perf_counter() - t0)
        if result.local:
            # Failure mode Open: the last spend Redis reported, plus this replica's since.
            self.metrics.store_errors.labels("admit").inc()
            log.warning("spend store unavailable; admitting on this replica's view", route=ctx.route)
        admission.holding = result.admitted
        for charge, state in zip(charges, result.states, strict=True):
            if state.over_limit:
                blocking = charge.entry.action is Action.BLOCK
                outcome = "over_limit_block" if blocking else "over_limit_audit"
                self._log_exceeded(ctx, charge, "admission", outcome)
        blocker = blocking_entry(charges, result.states)
        if not result.admitted and blocker is not None:
            self.metrics.requests.labels(ctx.route, "blocked").inc()
            self.recent_blocks.append(
                BlockedRequest(
                    time.time(), blocker.charge.entry.budget_id, blocker.charge.subject_text, ctx.route
                )
            )
            return blocker
        if ctx.budgets.rate_limit_headers:
            admission.quota = _tightest(admission.holds, charges, result.states)
        return admission

    def _held_output_tokens(self, request: LlmRequest) -> int:
        if request.max_tokens is not None:
            return request.max_tokens
        return self.settings.default_output_hold_tokens

    def holds(self, ctx: RouteContext, charges: tuple[Charge, ...], request: LlmRequest) -> tuple[Claim, ...]:
        """Each counter's hold: the request's estimated cost in that counter's unit."""
        estimate = Usage(
            input_tokens=request.estimated_input_tokens, output_tokens=self._held_output_tokens(request)
        )
        snap = ctx.snapshot
        nanos: int | None = None
        holds = []
        for charge in charges:
            if charge.entry.unit is Unit.TOKENS:
                amount = estimate.total_tokens
            else:
                if nanos is None:
                    nanos = snap.catalog.nanos(estimate, request.model, ctx.provider)
                amount = nanos
            holds.append(Claim(snap.counter(charge), amount))
        return tuple(holds)

    def _log_exceeded(self, ctx: RouteContext, charge: Charge, phase: str, outcome: str) -> None:
        e = charge.entry
        self.metrics.budget_exceeded.labels(e.budget_id, e.action.telemetry, phase).inc()
        log.warning(
            "budget exceeded",
            budget_id=e.budget_id,
            budget_action=e.action.telemetry,
            budget_unit=e.unit.telemetry,
            budget_limit=limit_text(charge),
            budget_window=e.window.telemetry,
            budget_subject=dict(charge.values) or None,
            phase=phase,
            outcome=outcome,
            request_id=ctx.headers.get("x-request-id"),
        )

    # -- accounting -----------------------------------------------------------------

    async def account(
        self,
        ctx: RouteContext,
        admission: Admission,
        reading: Reading,
        *,
        reason: str = "",
        cut: bool = False,
    ) -> Spend | None:
        """Record what the response showed, else release the holds; once per admission.
        `cut`: the sidecar ended the stream mid-response (a drain's deadline)."""
        usage, problem = reading.usage, reading.problem
        request = admission.request
        if problem:
            self.metrics.parse_problems.labels("response", problem).inc()
        model = reading.model or request.model
        estimated = False
        if usage is None and reading.responded and (ctx.budgets.estimate_usage or cut):
            # Rather an estimate than a free call: asked for by the route's policy, or the
            # upstream produced (and will bill) output this sidecar stopped watching. A byte
            # in four; a cut stream's at most what its hold assumed (SSE framing inflates).
            output = -(-reading.body_bytes // 4)
            if cut:
                output = min(output, self._held_output_tokens(request))
            usage = Usage(input_tokens=request.estimated_input_tokens, output_tokens=output)
            estimated = True
            self.metrics.estimated.labels(ctx.route).inc()
            if cut:
                log.warning(
                    "stream cut by the drain before its usage arrived; its spend is estimated",
                    route=ctx.route,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                )
        if usage is None:
            why = reason or problem or "no usage"
            await self._release(ctx, admission, why)
            if reading.responded:
                log.info(
                    "request",
                    route=ctx.route,
                    **{"http.status": reading.status, "gen_ai.request.model": request.model},
                    usage="none",
                    reason=why,
                )
            return None
        price = ctx.snapshot.catalog.price(usage, model, ctx.provider)
        if price.status is LookupStatus.UNPRICED:
            self.metrics.unpriced.labels(model or "").inc()
            log.warning("model not in catalog; priced at $0", model=model, provider=ctx.provider)
        spend = Spend(usage, price, model, estimated)
        self._record(ctx, admission, spend)
        self._log_request(ctx, admission, reading, spend)
        self.metrics.count(
            ctx.route,
            model or "",
            usage.input_tokens,
            usage.output_tokens,
            price.nanos,
            operation=ctx.call.api if ctx.call else "",
            provider=ctx.provider,
            request_model=request.model or "",
            seconds=time.monotonic() - ctx.started,
        )
        return spend

    def _record(self, ctx: RouteContext, admission: Admission, spend: Spend) -> None:
        """Off the client's path: the record is applied (memory) or journaled now, before
        the reply carrying the last chunk goes; its round trip to Redis goes on the next
        tick (coalesced with the others), and the drain waits for it (`settle`)."""
        if not admission.charges:
            return
        tokens, nanos = spend.usage.total_tokens, spend.price.nanos
        claims = [
            Claim(hold.counter, tokens if charge.entry.unit is Unit.TOKENS else nanos)
            for charge, hold in zip(admission.charges, admission.holds, strict=True)
        ]
        try:
            sending = self.store.record_soon(claims, admission.hold_id, time.time())
        except Exception:
            self.metrics.errors.labels("record").inc()
            log.exception("error recording spend", route=ctx.route)
            return
        if sending is not None:
            task = asyncio.ensure_future(self._send(ctx, sending, claims))
            self._recording.add(task)
            task.add_done_callback(self._recording.discard)

    async def _send(self, ctx: RouteContext, sending: Awaitable[None], claims: list[Claim]) -> None:
        try:
            await sending
        except StoreUnavailable as exc:
            # The failover store keeps it for replay; a bare store lost it: say so loudly.
            self.metrics.store_errors.labels("record").inc()
            log.error(
                "spend not recorded", route=ctx.route, error=str(exc), amounts=[c.amount for c in claims]
            )
        except Exception:  # nobody awaits it: said here, not as an unretrieved exception
            self.metrics.errors.labels("record").inc()
            log.exception("error recording spend", route=ctx.route)

    async def _release(self, ctx: RouteContext, admission: Admission, reason: str) -> None:
        if not admission.holding:
            return
        admission.holding = False
        self.metrics.holds_released.labels(reason).inc()
        try:
            await self.store.release([hold.counter for hold in admission.holds], admission.hold_id)
        except StoreUnavailable:
            self.metrics.store_errors.labels("release").inc()  # the lease will expire it

    def _log_request(self, ctx: RouteContext, admission: Admission, reading: Reading, spend: Spend) -> None:
        if not logs_info():
            return
        usage, price = spend.usage, spend.price
        log.info(
            "request",
            route=ctx.route,
            gateway=ctx.gateway or None,
            request_id=ctx.headers.get("x-request-id"),
            budget_ids=admission.budget_ids,
            subject=admission.subject or None,
            **{
                # Read from the body alone the status is not seen; only a success carries
                # usage in every API read here, so a response whose usage was read is a 200.
                "http.status": reading.status or (0 if spend.estimated else 200),
                "gen_ai.provider.name": ctx.provider,
                "gen_ai.request.model": admission.request.model,
                "gen_ai.response.model": reading.model,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.usage.cached_input_tokens": usage.cached_input_tokens,
                "gen_ai.usage.reasoning_tokens": usage.reasoning_tokens,
                "gen_ai.usage.cache_creation_input_tokens": usage.cache_creation_input_tokens,
                "gen_ai.usage.cost_usd": format_usd(price.usd),
                "cost_components": components_text(price),
                "usage_source": "estimated" if spend.estimated else "reported",
                "api": ctx.call.api if ctx.call else None,
                "price_status": price.status.value,
                "streamed": reading.streamed,
                "duration_ms": round((time.monotonic() - ctx.started) * 1000, 1),
            },
        )


def blocking_entry(charges: tuple[Charge, ...], states: tuple[CounterState, ...]) -> Blocked | None:
    """Of the `Block` entries over their limit, the one that frees up last (the 429 names it)."""
    blocker: Blocked | None = None
    for charge, state in zip(charges, states, strict=True):
        if not state.over_limit or charge.entry.action is not Action.BLOCK:
            continue
        if blocker is None or state.reset_seconds > blocker.state.reset_seconds:
            blocker = Blocked(charge, state)
    return blocker


def _tightest(
    holds: tuple[Claim, ...], charges: tuple[Charge, ...], states: tuple[CounterState, ...]
) -> Quota | None:
    """The charged entry closest to its limit, as a fraction of it (a blocking one before
    any audit one: only those can refuse the next request)."""
    best: tuple[bool, float] | None = None
    quota: Quota | None = None
    for hold, charge, state in zip(holds, charges, states, strict=True):
        limit = hold.counter.limit
        remaining = max(0, limit - state.spend - state.held - max(hold.amount, 0))
        rank = (not hold.counter.blocking, remaining / limit if limit > 0 else 0.0)
        if best is None or rank < best:
            # A rolling window is whole again once all its spend aged out: a window at most.
            reset = state.reset_seconds or hold.counter.window_seconds
            best, quota = rank, Quota(charge, remaining, reset)
    return quota


def counter_for(charge: Charge) -> Counter:
    e = charge.entry
    window = e.window.seconds
    return Counter(
        id=charge.counter_id,
        window_seconds=window,
        bucket_seconds=bucket_seconds_for(window),
        limit=e.limit_units,
        blocking=e.action is Action.BLOCK,
    )


def limit_text(charge: Charge) -> str:
    e = charge.entry
    return format_usd(e.amount) if e.unit is Unit.USD else str(int(e.amount))
