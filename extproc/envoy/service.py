"""What one ext_proc stream means: Envoy's messages for one HTTP request, turned into the
admission core's calls, and its decisions into replies.

One `Exchange` per HTTP request, living through three phases: the request headers set
its `RouteContext` (or leave it untouched), the request body (or headers, when no body
comes) its `Admission`, and the response feeds its `ResponseReader`. Whatever happens, an
admitted exchange is accounted for once (`close`): usage that was seen is recorded, else
its holds are released.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from google.protobuf.struct_pb2 import Struct

from extproc.admission import Admission, Blocked, Enforcer, RouteContext, Settings, Snapshot
from extproc.catalog import format_usd
from extproc.envoy import replies, wire
from extproc.envoy.wire import ProcessingRequest, ProcessingResponse
from extproc.store import SpendStore
from extproc.telemetry import Metrics, log
from extproc.usage import LlmRequest, apis
from extproc.usage.encoding import readable_encodings
from extproc.usage.response import ResponseReader


@dataclass(slots=True)
class Exchange:
    """One HTTP request/response through the filter: each phase's state, None until then."""

    # From the stream's gRPC metadata (plain Envoy, Istio); else the virtual host's.
    gateway: str = ""
    started: float = field(default_factory=time.monotonic)
    # Set by the request headers of a route some policy enforces.
    context: RouteContext | None = None
    # Envoy was told to skip the response headers: usage is read from the body alone.
    body_only: bool = False
    # The request body, gathered when Envoy streams it in chunks.
    body: bytearray = field(default_factory=bytearray)
    # Set once admitted (holding implies admitted: the holds are the admission's).
    admission: Admission | None = None
    response: ResponseReader | None = None
    finished: bool = False

    @property
    def route(self) -> str:
        return self.context.route if self.context is not None else ""


class BudgetService:
    def __init__(
        self, snapshot: Snapshot, store: SpendStore, metrics: Metrics, settings: Settings | None = None
    ) -> None:
        self.snapshot = snapshot
        self.enforcer = Enforcer(store, metrics, settings)
        self.store = store
        self.metrics = metrics
        self.settings = self.enforcer.settings
        # Set when a drain's deadline (or a second signal) ends the open streams: a stream
        # cut then, before its usage arrived, is charged an estimate instead of nothing.
        self.cutting = False

    async def settle(self) -> None:
        """Every record made after its reply has been sent (a drain, before the store closes)."""
        await self.enforcer.settle()

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
        route = route or ""
        gateway = ex.gateway = ex.gateway or virtual_host_gateway
        snapshot = self.snapshot
        route_budgets = snapshot.index.for_route(route, gateway)
        if route_budgets is None:
            # Visible by route, so a route named unlike any policy's target shows up.
            self.metrics.count_unenforced(route)
            return wire.UNTOUCHED_REQUEST_HEADERS
        headers = wire.header_map(msg.request_headers.headers)
        call = apis.identify(headers.get(":path", ""), headers.get(":authority", ""), headers)
        call = apis.override(call, api=route_budgets.api, provider=route_budgets.provider)
        ctx = ex.context = RouteContext(
            snapshot=snapshot,
            route=route,
            gateway=gateway,
            budgets=route_budgets,
            headers=headers,
            attributes=wire.attribute_strings(msg),
            metadata=msg.metadata_context.filter_metadata,
            call=call,
            provider=call.provider if call else (route_budgets.provider or ""),
            started=ex.started,
        )
        reply = self._request_headers_reply(ex, ctx, headers.get("accept-encoding"))
        if msg.request_headers.end_of_stream:
            # No body will come (a GET, say): admit on what the headers tell.
            return await self._admit(ex, ctx, LlmRequest(), reply)
        return reply

    def _request_headers_reply(
        self, ex: Exchange, ctx: RouteContext, accepted: str | None
    ) -> ProcessingResponse:
        """What Envoy sends next. Usage is read from the response body alone unless the
        route's policy estimates usage (it needs the status) or the operator asked for the
        headers. Body alone, the upstream is offered only the codings a body's first bytes
        show (gzip, deflate; not br), as the header naming the coding is not seen."""
        body_only = not (self.settings.read_response_headers or ctx.budgets.estimate_usage)
        if ctx.call is None:
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
        ctx = ex.context
        if ctx is None or ex.admission is not None:
            return wire.CONTINUE_REQUEST_BODY
        ex.body += msg.request_body.body
        if not msg.request_body.end_of_stream:
            return wire.CONTINUE_REQUEST_BODY  # only with a STREAMED request body mode
        body = bytes(ex.body)
        ex.body.clear()
        call = ctx.call
        if call is None:
            # An API we do not read: admitted on what we know, its spend unknown.
            if body:
                self.metrics.unparsed.labels(ctx.route).inc()
                log.info(
                    "unparsed",
                    route=ctx.route,
                    path=ctx.headers.get(":path", "").split("?")[0],
                    bytes=len(body),
                )
            request = LlmRequest(estimated_input_tokens=-(-len(body) // 4))
            return await self._admit(ex, ctx, request, wire.CONTINUE_REQUEST_BODY, body)
        parsed = apis.reader(call).parse_request(body, call)
        if parsed.problem:
            self.metrics.parse_problems.labels("request", parsed.problem).inc()
            log.info("request body not read", route=ctx.route, problem=parsed.problem, bytes=len(body))
        request = parsed.request
        if request.model is None and call.model:
            request = dataclasses.replace(request, model=call.model)
        reply = wire.CONTINUE_REQUEST_BODY
        if parsed.rewritten_body is not None:
            reply = wire.replace_request_body(parsed.rewritten_body)
        return await self._admit(ex, ctx, request, reply, body, hide_usage_chunk=parsed.injected_usage)

    async def _admit(
        self,
        ex: Exchange,
        ctx: RouteContext,
        request: LlmRequest,
        reply: ProcessingResponse,
        body: bytes = b"",
        *,
        hide_usage_chunk: bool = False,
    ) -> ProcessingResponse:
        decision = await self.enforcer.admit(ctx, request, body)
        if isinstance(decision, Admission):
            ex.admission = decision
            ex.response = ResponseReader(
                ctx.call,
                request_streams=request.stream,
                hide_usage_chunk=hide_usage_chunk,
                body_only=ex.body_only,
            )
            return replies.admitted(reply, decision)
        # Nothing admitted, nothing held: the stream ends with this reply.
        ex.finished = True
        if isinstance(decision, Blocked):
            return replies.budget_exceeded(decision)
        return replies.STORE_UNAVAILABLE

    # -- response phase -------------------------------------------------------------

    async def _response_headers(self, ex: Exchange, msg: ProcessingRequest) -> ProcessingResponse:
        reader = ex.response
        if reader is None or ex.finished:
            # The stream began at the response phase (a local reply from an earlier
            # filter, such as jwt_authn's 401): nothing was admitted, nothing to count.
            return wire.CONTINUE_RESPONSE_HEADERS
        headers = wire.header_map(msg.response_headers.headers)
        try:
            status = int(headers.get(":status", "0"))
        except ValueError:
            status = 0
        if msg.response_headers.end_of_stream:
            reader.status = status
            await self.close(ex)
            return wire.CONTINUE_RESPONSE_HEADERS
        # The headers came after all (an Envoy without allow_mode_override).
        streamed = reader.headers(
            status, headers.get("content-encoding", ""), headers.get("content-type", "")
        )
        return wire.STREAM_RESPONSE_HEADERS if streamed else wire.CONTINUE_RESPONSE_HEADERS

    async def _response_body(self, ex: Exchange, msg: ProcessingRequest) -> ProcessingResponse:
        reader = ex.response
        if reader is None or ex.finished:
            return wire.CONTINUE_RESPONSE_BODY
        end = msg.response_body.end_of_stream
        replaced = reader.feed(msg.response_body.body, end)
        metadata = await self.close(ex) if end else None
        if replaced is None and metadata is None:
            return wire.CONTINUE_RESPONSE_BODY
        return wire.response_body_reply(replaced, metadata)

    async def close(self, ex: Exchange, reason: str = "", *, cut: bool = False) -> Struct | None:
        """Account for the exchange once: record what usage was seen, else release holds.
        `cut`: this sidecar ended the stream mid-response (a drain's deadline)."""
        ctx, admission, reader = ex.context, ex.admission, ex.response
        if ex.finished or ctx is None or admission is None or reader is None:
            return None
        ex.finished = True
        spend = await self.enforcer.account(ctx, admission, reader.reading(), reason=reason, cut=cut)
        if spend is None:
            return None
        return wire.metadata_struct(
            replies.METADATA_NAMESPACE,
            {
                "cost_usd": format_usd(spend.price.usd),
                "input_tokens": spend.usage.input_tokens,
                "output_tokens": spend.usage.output_tokens,
                "model": spend.model or "",
            },
        )
