"""What one ext_proc stream means: admit an LLM call against its budgets, then account for it.

One `Exchange` per HTTP request. The request phase resolves the route, the subject and
the matching entries, and asks the store to admit (placing holds) or answers 429. The
response phase reads usage, prices it and records the spend, releasing the holds.
Whatever happens, a hold is released and usage that was seen is recorded (`close`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.struct_pb2 import Struct

from extproc import budgets
from extproc.budgets import BudgetIndex, Charge, RouteBudgets
from extproc.catalog import Catalog, LookupStatus, Price, components_text, format_usd
from extproc.config.model import Action, Config, FailureMode, Unit
from extproc.dimensions import resolve
from extproc.server import wire
from extproc.server.wire import ProcessingRequest, ProcessingResponse
from extproc.store import Counter, CounterState, LocalAdmission, MemoryStore, SpendStore, StoreUnavailable
from extproc.store.windows import bucket_seconds_for
from extproc.telemetry import Metrics, log, logs_info
from extproc.usage import LlmRequest, Usage, UsageStream, apis
from extproc.usage.api import ApiCall
from extproc.usage.encoding import DecodedStream, decode_body, encoding_by_magic, readable_encodings

METADATA_NAMESPACE = "extproc.budgets"
# Response content types that stream: SSE (OpenAI, Anthropic, Gemini) and Bedrock's frames.
_STREAM_TYPES = ("text/event-stream", "application/vnd.amazon.eventstream")


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


@dataclass(slots=True)
class Exchange:
    """The state of one HTTP request/response through the filter."""

    started: float = field(default_factory=time.monotonic)
    # The configuration this exchange began under: a reload mid-request does not change
    # which entries it was admitted against and is charged to.
    snapshot: Snapshot | None = None
    route: str = ""
    # The gateway the request came through, `NAMESPACE/NAME`; "" when Envoy did not say.
    gateway: str = ""
    route_budgets: RouteBudgets | None = None
    headers: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Struct] = field(default_factory=dict)
    request: LlmRequest = field(default_factory=LlmRequest)
    # What the path (or the route's policy) says the call is; None: no parser reads it.
    call: ApiCall | None = None
    provider: str = ""
    content_encoding: str = ""
    # Response body bytes seen, for usage estimates when a response reports none.
    response_bytes: int = 0
    charges: list[Charge] = field(default_factory=list)
    counters: list[Counter] = field(default_factory=list)
    hold_id: str = ""
    holding: bool = False
    admitted: bool = False
    injected_usage: bool = False
    status: int = 0
    # Envoy was told to skip the response headers: the body alone is read.
    body_only: bool = False
    streaming: bool = False
    accumulator: UsageStream | None = None
    body: bytearray = field(default_factory=bytearray)
    finished: bool = False


class BudgetService:
    def __init__(
        self, snapshot: Snapshot, store: SpendStore, metrics: Metrics, settings: Settings | None = None
    ) -> None:
        self.snapshot = snapshot
        self.store = store
        self.metrics = metrics
        self.settings = settings or Settings()
        # Set when a drain's deadline (or a second signal) ends the open streams: a stream
        # cut then, before its usage arrived, is charged an estimate instead of nothing.
        self.cutting = False
        # Records to Redis go after the reply; in memory they cost no round trip.
        self._record_after_reply = not isinstance(store, MemoryStore)
        self._recording: set[asyncio.Task[None]] = set()

    async def settle(self) -> None:
        """Every record made after its reply has been sent (a drain, before the store closes)."""
        while self._recording:
            await asyncio.gather(*list(self._recording), return_exceptions=True)

    # -- the message dispatch -------------------------------------------------------

    async def handle(self, ex: Exchange, msg: ProcessingRequest) -> ProcessingResponse:
        kind = msg.WhichOneof("request")
        if kind == "request_headers":
            return await self._request_headers(ex, msg)
        if kind == "request_body":
            return await self._request_body(ex, msg)
        if kind == "response_headers":
            return await self._response_headers(ex, msg)
        if kind == "response_body":
            return await self._response_body(ex, msg)
        if kind == "response_trailers":
            await self.close(ex)
        return wire.continue_reply(kind or "request_headers")

    # -- request phase --------------------------------------------------------------

    async def _request_headers(self, ex: Exchange, msg: ProcessingRequest) -> ProcessingResponse:
        route, virtual_host_gateway = wire.route_and_gateway(msg)
        ex.route = route or ""
        # The stream's gRPC metadata first; else the virtual host's (Envoy Gateway's).
        ex.gateway = ex.gateway or virtual_host_gateway
        ex.snapshot = self.snapshot
        ex.route_budgets = ex.snapshot.index.for_route(ex.route, ex.gateway)
        if ex.route_budgets is None:
            # Visible by route, so a route named unlike any policy's target shows up.
            self.metrics.count_unenforced(ex.route)
            return wire.UNTOUCHED_REQUEST_HEADERS
        ex.headers = wire.header_map(msg.request_headers.headers)
        ex.attributes = wire.attribute_strings(msg)
        ex.metadata = msg.metadata_context.filter_metadata
        route_budgets = ex.route_budgets
        call = apis.identify(ex.headers.get(":path", ""), ex.headers.get(":authority", ""), ex.headers)
        ex.call = apis.override(call, api=route_budgets.api, provider=route_budgets.provider)
        ex.provider = ex.call.provider if ex.call else (route_budgets.provider or "")
        reply = self._request_headers_reply(ex, ex.headers.get("accept-encoding"))
        if msg.request_headers.end_of_stream:
            # No body will come (a GET, say): admit on what the headers tell.
            return await self._admit(ex, reply)
        return reply

    def _request_headers_reply(self, ex: Exchange, accepted: str | None) -> ProcessingResponse:
        """What Envoy sends next. Usage is read from the response body alone unless the
        route's policy estimates usage (it needs the status) or the operator asked for the
        headers. Body alone, the upstream is offered only the codings a body's first bytes
        show (gzip, deflate; not br), as the header naming the coding is not seen."""
        body_only = not (
            self.settings.read_response_headers or (ex.route_budgets and ex.route_budgets.estimate_usage)
        )
        if ex.call is None:
            # Nothing would read the response: with the body alone, Envoy need not send it.
            return wire.NO_RESPONSE_REQUEST_HEADERS if body_only else wire.CONTINUE_REQUEST_HEADERS
        ex.body_only = body_only
        if accepted:
            offered = readable_encodings(accepted, by_magic=body_only)
            if offered != accepted:
                # A response in a coding we could not read (or not recognise) would go uncounted.
                return wire.set_request_headers(
                    {"accept-encoding": offered or "identity"}, body_only=body_only
                )
        return wire.BODY_ONLY_REQUEST_HEADERS if body_only else wire.CONTINUE_REQUEST_HEADERS

    async def _request_body(self, ex: Exchange, msg: ProcessingRequest) -> ProcessingResponse:
        if ex.route_budgets is None or ex.admitted:
            return wire.CONTINUE_REQUEST_BODY
        ex.body += msg.request_body.body
        if not msg.request_body.end_of_stream:
            return wire.CONTINUE_REQUEST_BODY  # only with a STREAMED request body mode
        body = bytes(ex.body)
        ex.body.clear()
        reply = wire.CONTINUE_REQUEST_BODY
        if ex.call is None:
            # An API we do not read: admitted on what we know, its spend unknown.
            ex.request = LlmRequest(estimated_input_tokens=-(-len(body) // 4))
            if body:
                self.metrics.unparsed.labels(ex.route).inc()
                log.info(
                    "unparsed",
                    route=ex.route,
                    path=ex.headers.get(":path", "").split("?")[0],
                    bytes=len(body),
                )
            return await self._admit(ex, reply, body)
        parsed = apis.reader(ex.call).parse_request(body, ex.call)
        if parsed.problem:
            self.metrics.parse_problems.labels("request", parsed.problem).inc()
            log.info("request body not read", route=ex.route, problem=parsed.problem, bytes=len(body))
        ex.request = parsed.request
        if ex.request.model is None and ex.call.model:
            ex.request = dataclasses.replace(ex.request, model=ex.call.model)
        if parsed.rewritten_body is not None:
            ex.injected_usage = parsed.injected_usage
            reply = wire.replace_request_body(parsed.rewritten_body)
        return await self._admit(ex, reply, body)

    async def _admit(self, ex: Exchange, reply: ProcessingResponse, body: bytes = b"") -> ProcessingResponse:
        """Resolve the subject (`body`: the request body as the client sent it, for body
        dimensions), match the entries, and ask the store to admit."""
        ex.admitted = True
        route_budgets = ex.route_budgets
        assert route_budgets is not None
        snap = ex.snapshot or self.snapshot
        dims = resolve(
            snap.config.dimensions,
            headers=ex.headers,
            metadata=ex.metadata,
            attributes=ex.attributes,
            builtins={"model": ex.request.model, "provider": ex.provider, "route": ex.route},
            body=body,
        )
        matching = route_budgets.match(dims)
        if matching.capped:
            log.warning(
                "subject combinations capped",
                route=ex.route,
                budget_ids=list(matching.capped),
                charged_per_entry=budgets.MAX_COMBINATIONS,
            )
        ex.charges = list(matching.charges)
        if not ex.charges:
            return reply
        ex.counters = [snap.counter(c) for c in ex.charges]
        ex.hold_id = uuid.uuid4().hex
        holds = self._holds(ex)
        t0 = time.perf_counter()
        try:
            result = await self.store.admit(
                ex.counters, holds, ex.hold_id, self.settings.hold_lease_seconds, time.time()
            )
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("admit").inc()
            if route_budgets.failure_mode is FailureMode.CLOSED:
                log.error("spend store unavailable; rejecting", route=ex.route, error=str(exc))
                self.metrics.requests.labels(ex.route, "store_unavailable").inc()
                return _store_unavailable_reply()
            if not isinstance(self.store, LocalAdmission):
                log.warning(
                    "spend store unavailable; admitting (failure mode Open)", route=ex.route, error=str(exc)
                )
                return reply
            # Failure mode Open: the last spend Redis reported, plus this replica's since.
            log.warning(
                "spend store unavailable; admitting on this replica's view", route=ex.route, error=str(exc)
            )
            result = self.store.admit_locally(
                ex.counters, holds, ex.hold_id, self.settings.hold_lease_seconds, time.time()
            )
        finally:
            self.metrics.admission_seconds.observe(time.perf_counter() - t0)
        ex.holding = result.admitted
        blocker: tuple[Charge, CounterState] | None = None
        for charge, state in zip(ex.charges, result.states, strict=True):
            if not state.over_limit:
                continue
            entry = charge.entry
            blocking = entry.action is Action.BLOCK
            self._log_exceeded(charge, "admission", "over_limit_block" if blocking else "over_limit_audit")
            if blocking and (blocker is None or state.reset_seconds > blocker[1].reset_seconds):
                blocker = (charge, state)
        if not result.admitted and blocker is not None:
            self.metrics.requests.labels(ex.route, "blocked").inc()
            return _budget_exceeded_reply(*blocker)
        return reply

    def _held_output_tokens(self, ex: Exchange) -> int:
        req = ex.request
        return req.max_tokens if req.max_tokens is not None else self.settings.default_output_hold_tokens

    def _holds(self, ex: Exchange) -> list[int]:
        """Each counter's hold: the request's estimated cost in that counter's unit."""
        req = ex.request
        estimate = Usage(input_tokens=req.estimated_input_tokens, output_tokens=self._held_output_tokens(ex))
        nanos: int | None = None
        holds = []
        for charge in ex.charges:
            if charge.entry.unit is Unit.TOKENS:
                holds.append(estimate.total_tokens)
            else:
                if nanos is None:
                    nanos = (ex.snapshot or self.snapshot).catalog.nanos(estimate, req.model, ex.provider)
                holds.append(nanos)
        return holds

    def _log_exceeded(self, charge: Charge, phase: str, outcome: str) -> None:
        e = charge.entry
        self.metrics.budget_exceeded.labels(e.budget_id, e.action.telemetry, phase).inc()
        log.warning(
            "budget exceeded",
            budget_id=e.budget_id,
            budget_action=e.action.telemetry,
            budget_unit=e.unit.telemetry,
            budget_limit=_limit_text(charge),
            budget_window=e.window.telemetry,
            budget_subject=dict(charge.values) or None,
            phase=phase,
            outcome=outcome,
        )

    # -- response phase -------------------------------------------------------------

    async def _response_headers(self, ex: Exchange, msg: ProcessingRequest) -> ProcessingResponse:
        headers = wire.header_map(msg.response_headers.headers)
        try:
            ex.status = int(headers.get(":status", "0"))
        except ValueError:
            ex.status = 0
        if not ex.admitted:
            # The stream began at the response phase (a local reply from an earlier
            # filter, such as jwt_authn's 401): nothing was admitted, nothing to count.
            return wire.CONTINUE_RESPONSE_HEADERS
        if msg.response_headers.end_of_stream:
            await self.close(ex)
            return wire.CONTINUE_RESPONSE_HEADERS
        ex.body_only = False  # the headers came after all (an Envoy without allow_mode_override)
        ex.content_encoding = headers.get("content-encoding", "")
        ctype = headers.get("content-type", "")
        if self._start_reading(ex, ex.call is not None and ctype.startswith(_STREAM_TYPES)):
            return wire.STREAM_RESPONSE_HEADERS
        return wire.CONTINUE_RESPONSE_HEADERS

    def _start_reading(self, ex: Exchange, streamed: bool) -> bool:
        """Set up the reader of a streamed response (SSE, Bedrock's frames); False for a
        whole body, read at its end."""
        if ex.call is None or not (streamed or ex.call.streaming):
            return False
        ex.streaming = True
        stream = apis.reader(ex.call).stream(ex.call, hide_usage_chunk=ex.injected_usage)
        if ex.content_encoding and ex.content_encoding != "identity":
            stream = DecodedStream(stream, ex.content_encoding)
        ex.accumulator = stream
        return True

    def _first_body_chunk(self, ex: Exchange, chunk: bytes) -> None:
        """Body-only reading: what the headers would have said, from the request and the
        chunk (an encoding the upstream used although asked for identity, an SSE stream)."""
        ex.body_only = False
        ex.content_encoding = encoding_by_magic(chunk)
        sse = not ex.content_encoding and chunk.lstrip()[:6] in (b"data: ", b"event:", b"data:{")
        self._start_reading(ex, ex.request.stream or sse)

    async def _response_body(self, ex: Exchange, msg: ProcessingRequest) -> ProcessingResponse:
        if not ex.admitted or ex.finished:
            return wire.CONTINUE_RESPONSE_BODY
        chunk = msg.response_body.body
        end = msg.response_body.end_of_stream
        if ex.body_only and chunk:
            self._first_body_chunk(ex, chunk)
        ex.response_bytes += len(chunk)
        if ex.accumulator is not None:
            out = ex.accumulator.feed(chunk)
            if end:
                out += ex.accumulator.finish()
            replaced = None if out is chunk else out
            metadata = await self.close(ex) if end else None
            if replaced is None and metadata is None:
                return wire.CONTINUE_RESPONSE_BODY
            return wire.response_body_reply(replaced, metadata)
        ex.body += chunk
        if not end:
            return wire.CONTINUE_RESPONSE_BODY  # a STREAMED non-SSE body: keep a copy
        metadata = await self.close(ex)
        return wire.response_body_reply(None, metadata)

    async def close(self, ex: Exchange, reason: str = "", *, cut: bool = False) -> Struct | None:
        """Account for the exchange once: record what usage was seen, else release holds.
        `cut`: this sidecar ended the stream mid-response (a drain's deadline)."""
        if ex.finished or not ex.admitted:
            return None
        ex.finished = True
        usage, response_model, problem = self._usage(ex)
        if problem:
            self.metrics.parse_problems.labels("response", problem).inc()
        model = response_model or ex.request.model
        estimated = False
        asked = ex.route_budgets is not None and ex.route_budgets.estimate_usage
        responded = bool(ex.status or ex.response_bytes)  # the status is unknown when body-only
        if usage is None and responded and (asked or cut):
            # Rather an estimate than a free call: asked for by the route's policy, or the
            # upstream produced (and will bill) output this sidecar stopped watching. A byte
            # in four; a cut stream's at most what its hold assumed (SSE framing inflates).
            output = -(-ex.response_bytes // 4)
            if cut:
                output = min(output, self._held_output_tokens(ex))
            usage = Usage(input_tokens=ex.request.estimated_input_tokens, output_tokens=output)
            estimated = True
            self.metrics.estimated.labels(ex.route).inc()
            if cut:
                log.warning(
                    "stream cut by the drain before its usage arrived; its spend is estimated",
                    route=ex.route,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                )
        if usage is None:
            await self._release(ex, reason or problem or "no usage")
            if responded:
                log.info(
                    "request",
                    route=ex.route,
                    **{"http.status": ex.status, "gen_ai.request.model": ex.request.model},
                    usage="none",
                    reason=reason or problem or "no usage",
                )
            return None
        price = (ex.snapshot or self.snapshot).catalog.price(usage, model, ex.provider)
        if price.status is LookupStatus.UNPRICED:
            self.metrics.unpriced.labels(model or "").inc()
            log.warning("model not in catalog; priced at $0", model=model, provider=ex.provider)
        if self._record_after_reply:
            # Off the client's path: the reply carrying the last chunk goes now, the record
            # on the next tick (coalesced with the others); the drain waits for it (`settle`).
            task = asyncio.ensure_future(self._record_safely(ex, usage, price))
            self._recording.add(task)
            task.add_done_callback(self._recording.discard)
        else:
            await self._record(ex, usage, price)
        self._log_request(ex, usage, price, response_model, estimated)
        self.metrics.count(ex.route, model or "", usage.input_tokens, usage.output_tokens, price.nanos)
        return wire.metadata_struct(
            METADATA_NAMESPACE,
            {
                "cost_usd": format_usd(price.usd),
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "model": model or "",
            },
        )

    def _usage(self, ex: Exchange) -> tuple[Usage | None, str | None, str | None]:
        if ex.accumulator is not None:
            acc = ex.accumulator
            problem = None if acc.usage is not None else "stream ended without usage"
            return acc.usage, acc.model, problem
        if ex.call is None:
            return None, None, None
        if not ex.body:
            return None, None, "empty response body" if ex.status else None
        body = bytes(ex.body)
        ex.body.clear()
        if ex.content_encoding and ex.content_encoding != "identity":
            body, decode_problem = decode_body(body, ex.content_encoding)
            if decode_problem:
                return None, None, decode_problem
        parsed = apis.reader(ex.call).parse_response(body, ex.call)
        return parsed.usage, parsed.model, parsed.problem

    async def _record_safely(self, ex: Exchange, usage: Usage, price: Price) -> None:
        try:
            await self._record(ex, usage, price)
        except Exception:  # nobody awaits it: said here, not as an unretrieved exception
            self.metrics.errors.labels("record").inc()
            log.exception("error recording spend", route=ex.route)

    async def _record(self, ex: Exchange, usage: Usage, price: Price) -> None:
        if not ex.counters:
            return
        amounts = [usage.total_tokens if c.entry.unit is Unit.TOKENS else price.nanos for c in ex.charges]
        try:
            await self.store.record(ex.counters, amounts, ex.hold_id, time.time())
        except StoreUnavailable as exc:
            # The failover store keeps it for replay; a bare store lost it: say so loudly.
            self.metrics.store_errors.labels("record").inc()
            log.error("spend not recorded", route=ex.route, error=str(exc), amounts=amounts)

    async def _release(self, ex: Exchange, reason: str) -> None:
        if not ex.holding:
            return
        ex.holding = False
        self.metrics.holds_released.labels(reason).inc()
        try:
            await self.store.release(ex.counters, ex.hold_id)
        except StoreUnavailable:
            self.metrics.store_errors.labels("release").inc()  # the lease will expire it

    def _log_request(
        self, ex: Exchange, usage: Usage, price: Price, response_model: str | None, estimated: bool
    ) -> None:
        if not logs_info():
            return
        log.info(
            "request",
            route=ex.route,
            gateway=ex.gateway or None,
            **{
                # Read from the body alone the status is not seen; only a success carries
                # usage in every API read here, so a response whose usage was read is a 200.
                "http.status": ex.status or (0 if estimated else 200),
                "gen_ai.provider.name": ex.provider,
                "gen_ai.request.model": ex.request.model,
                "gen_ai.response.model": response_model,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.usage.cached_input_tokens": usage.cached_input_tokens,
                "gen_ai.usage.reasoning_tokens": usage.reasoning_tokens,
                "gen_ai.usage.cache_creation_input_tokens": usage.cache_creation_input_tokens,
                "gen_ai.usage.cost_usd": format_usd(price.usd),
                "cost_components": components_text(price),
                "usage_source": "estimated" if estimated else "reported",
                "api": ex.call.api if ex.call else None,
                "price_status": price.status.value,
                "streamed": ex.streaming,
                "duration_ms": round((time.monotonic() - ex.started) * 1000, 1),
            },
        )


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


def _limit_text(charge: Charge) -> str:
    e = charge.entry
    return format_usd(e.amount) if e.unit is Unit.USD else str(int(e.amount))


def _budget_exceeded_reply(charge: Charge, state: CounterState) -> ProcessingResponse:
    e = charge.entry
    reset = str(max(1, state.reset_seconds))
    limit = _limit_text(charge)
    unit = "USD" if e.unit is Unit.USD else "tokens"
    message = (
        f"Budget {e.budget_id} exceeded: limit {limit} {unit} per {e.window.value.lower()}"
        f" (rolling). Retry in {reset} seconds."
    )
    body = json.dumps(
        {"error": {"message": message, "type": "budget_exceeded", "param": None, "code": "budget_exceeded"}}
    ).encode()
    headers = {
        "content-type": "application/json",
        "x-ratelimit-limit": limit,
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": reset,
        "retry-after": reset,
        "x-budget-id": e.budget_id,
    }
    return wire.immediate(429, headers, body, f"budget_exceeded:{e.budget_id}")


def _store_unavailable_reply() -> ProcessingResponse:
    body = json.dumps(
        {
            "error": {
                "message": "Budget enforcement is unavailable (spend store unreachable);"
                " failure mode Closed.",
                "type": "budget_store_unavailable",
                "param": None,
                "code": "budget_store_unavailable",
            }
        }
    ).encode()
    return wire.immediate(
        503, {"content-type": "application/json", "retry-after": "1"}, body, "budget_store_unavailable"
    )
