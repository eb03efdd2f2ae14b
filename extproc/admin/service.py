"""`extproc.budgets.v1.BudgetAdmin`: the live configuration and spend, for grpcurl and tools.

Served on the sidecar's gRPC port beside ext_proc. Every method shows per-subject data, so
it needs `authorization: Bearer TOKEN` when the sidecar has an admin token, and otherwise a
loopback peer (as `/spend` does); AdjustSpend is off unless `--admin-adjust`. Nothing here
is on a request's path: each call reads the configuration snapshot of the moment and the
store.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from extproc.admin.proto import admin_pb2 as pb
from extproc.admin.proto import admin_pb2_grpc as pb_grpc
from extproc.admission import RouteContext, blocking_entry, counter_for
from extproc.budgets import Charge, discovered
from extproc.config.model import NANOS_PER_USD, WILDCARD, BudgetEntry, Config, Unit
from extproc.envoy.service import BudgetService
from extproc.spend import amount_text, charges_seen, remaining
from extproc.store import StoreUnavailable
from extproc.telemetry import log
from extproc.usage import LlmRequest, apis

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BudgetAdmin"].full_name
JWT_NAMESPACE = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD = "jwt_payload"
_DEFAULT_PAGE = 100
_MAX_PAGE = 1000


class BudgetAdmin(pb_grpc.BudgetAdminServicer):
    def __init__(
        self, service: BudgetService, *, token: str | None = None, allow_adjust: bool = False
    ) -> None:
        self.service = service
        self._authorization = f"bearer {token}".encode() if token else None
        self.allow_adjust = allow_adjust

    # -- the methods ----------------------------------------------------------------

    async def ListBudgets(self, request: pb.ListBudgetsRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        config = self.service.snapshot.config
        policies = _policies_by_resource(config)
        out = pb.ListBudgetsResponse()
        for resource in config.budgets:
            if request.namespace and resource.namespace != request.namespace:
                continue
            for entry in resource.entries:
                out.entries.append(
                    pb.BudgetEntry(
                        budget_id=entry.budget_id,
                        namespace=entry.namespace,
                        resource=entry.resource,
                        name=entry.name,
                        unit=entry.unit.value,
                        limit=amount_text(entry, entry.limit_units),
                        window=entry.window.value,
                        window_seconds=entry.window.seconds,
                        action=entry.action.value,
                        subject=dict(entry.subject),
                        policies=policies.get((resource.namespace, resource.name), []),
                    )
                )
        return out

    async def GetSpend(self, request: pb.GetSpendRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        config = self.service.snapshot.config
        if request.budget_id:
            _entry(config, request.budget_id) or await _abort(
                context, grpc.StatusCode.NOT_FOUND, f"no budget entry {request.budget_id!r}"
            )
        size = request.page_size or _DEFAULT_PAGE
        if not 0 < size <= _MAX_PAGE:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"page_size is 1 to {_MAX_PAGE}")
        start = _page_start(request.page_token) if request.page_token else 0
        if start is None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "page_token is not one this API gave")
        store = self.service.store
        try:
            charges = await charges_seen(
                config,
                store,
                budget_id=request.budget_id,
                namespace=request.namespace,
                subject=dict(request.subject),
            )
            page = charges[start : start + size]
            states = await store.read([counter_for(c) for c in page], time.time()) if page else ()
        except StoreUnavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"the spend store did not answer: {exc}")
        if not charges and request.subject:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no spend for subject {dict(request.subject)}")
        out = pb.GetSpendResponse()
        for charge, state in zip(page, states, strict=True):
            e = charge.entry
            out.rows.append(
                pb.SpendRow(
                    budget_id=e.budget_id,
                    subject=dict(charge.values),
                    unit=e.unit.value,
                    window=e.window.value,
                    action=e.action.value,
                    spend=amount_text(e, state.spend),
                    held=amount_text(e, state.held),
                    limit=amount_text(e, e.limit_units),
                    remaining=amount_text(e, remaining(e, state)),
                    reset_seconds=state.reset_seconds,
                    blocked=state.over_limit and e.action.value == "Block",
                )
            )
        if start + size < len(charges):
            out.next_page_token = _page_token(start + size)
        return out

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        snapshot = self.service.snapshot
        budgets = snapshot.index.for_route(request.route, request.gateway)
        if budgets is None:
            targeted = sorted({t.name for p in snapshot.config.policies for t in p.target_refs})
            return pb.ExplainResponse(
                enforced=False,
                decision="untouched",
                detail=f"no policy targets route {request.route!r}"
                + (f" through gateway {request.gateway!r}" if request.gateway else "")
                + f"; policies target: {', '.join(targeted) or 'nothing'}",
            )
        headers = {k.lower(): v for k, v in request.headers.items()}
        call = apis.identify(headers.get(":path", ""), headers.get(":authority", ""), headers)
        call = apis.override(call, api=budgets.api, provider=budgets.provider)
        metadata = _metadata(request)
        body = request.body.encode()
        llm = LlmRequest(estimated_input_tokens=-(-len(body) // 4))
        if call is not None and body:
            llm = apis.reader(call).parse_request(body, call).request
        if call is not None and llm.model is None and call.model:
            llm = dataclasses.replace(llm, model=call.model)
        ctx = RouteContext(
            snapshot=snapshot,
            route=request.route,
            gateway=request.gateway,
            budgets=budgets,
            headers=headers,
            attributes={},
            metadata=metadata,
            call=call,
            provider=call.provider if call else (budgets.provider or ""),
        )
        enforcer = self.service.enforcer
        dims, charges = enforcer.match(ctx, llm, body)
        holds = enforcer.holds(ctx, charges, llm)
        try:
            states = await self.service.store.read([h.counter for h in holds], time.time()) if holds else ()
        except StoreUnavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"the spend store did not answer: {exc}")
        out = pb.ExplainResponse(
            enforced=True,
            dimensions={k: v if isinstance(v, str) else ",".join(v) for k, v in dims.items()},
            failure_mode=budgets.failure_mode.value,
            api=call.api if call else "",
            model=llm.model or "",
        )
        for charge, hold, state in zip(charges, holds, states, strict=True):
            e = charge.entry
            out.entries.append(
                pb.ExplainEntry(
                    budget_id=e.budget_id,
                    subject=dict(charge.values),
                    action=e.action.value,
                    unit=e.unit.value,
                    spend=amount_text(e, state.spend),
                    held=amount_text(e, state.held),
                    limit=amount_text(e, e.limit_units),
                    hold=amount_text(e, hold.amount),
                    over_limit=state.over_limit,
                    reset_seconds=state.reset_seconds,
                )
            )
        blocker = blocking_entry(charges, tuple(states))
        if blocker is not None:
            e = blocker.charge.entry
            out.decision = "block"
            out.blocking_budget_id = e.budget_id
            out.retry_after_seconds = max(1, blocker.state.reset_seconds)
            out.detail = (
                f"{e.budget_id} for {dict(blocker.charge.values) or 'everyone'} is at"
                f" {amount_text(e, blocker.state.spend + blocker.state.held)} of"
                f" {amount_text(e, e.limit_units)} {e.unit.value} per {e.window.value.lower()};"
                f" under it again in {out.retry_after_seconds} s"
            )
        elif not charges:
            out.decision = "admit"
            out.detail = f"no entry matches the request's dimensions {out.dimensions or '{}'}"
        else:
            out.decision = "admit"
            out.detail = f"admitted: {len(charges)} entries charged, none at its limit"
        return out

    async def ListHolds(self, request: pb.ListHoldsRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        charge = await self._charge(context, request.budget_id, request.subject)
        now = time.time()
        try:
            holds = await self.service.store.holds(counter_for(charge), now)
        except StoreUnavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"the spend store did not answer: {exc}")
        out = pb.ListHoldsResponse(budget_id=request.budget_id, subject=dict(charge.values))
        for hold in holds:
            out.holds.append(
                pb.Hold(
                    hold_id=hold.hold_id,
                    amount=amount_text(charge.entry, hold.amount),
                    expires_in_seconds=max(0, -(-(hold.expiry_ms - int(now * 1000)) // 1000)),
                )
            )
        return out

    async def AdjustSpend(self, request: pb.AdjustSpendRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        if not self.allow_adjust:
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "AdjustSpend is off: start the sidecar with --admin-adjust",
            )
        if not request.reason.strip():
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a reason is required (it is logged)")
        which = request.WhichOneof("adjustment")
        if which is None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "give credit (an amount) or reset: true")
        charge = await self._charge(context, request.budget_id, request.subject)
        entry = charge.entry
        credit: int | None = None
        if which == "credit":
            credit = _units(entry, request.credit)
            if credit is None:
                await _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"credit {request.credit!r} is not a positive amount of {entry.unit.value}",
                )
        elif not request.reset:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "reset: false adjusts nothing")
        counter = counter_for(charge)
        store = self.service.store
        try:
            (state,) = await store.read([counter], time.time())
            if state.spend == 0:
                await _abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"{entry.budget_id} has no spend for {dict(charge.values) or 'everyone'} to adjust",
                )
            before, after = await store.adjust(counter, credit, time.time())
        except StoreUnavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"the spend store did not answer: {exc}")
        log.warning(
            "spend adjusted",
            budget_id=entry.budget_id,
            budget_subject=dict(charge.values) or None,
            adjustment="reset" if credit is None else f"credit {amount_text(entry, credit)}",
            spend_before=amount_text(entry, before),
            spend_after=amount_text(entry, after),
            reason=request.reason,
            peer=context.peer(),
        )
        return pb.AdjustSpendResponse(
            spend_before=amount_text(entry, before), spend_after=amount_text(entry, after)
        )

    # -- helpers --------------------------------------------------------------------

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if self._authorization is None:
            if not _loopback(context.peer()):
                await _abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    "per-subject data: ask from localhost, or start the sidecar with --admin-token-file",
                )
            return
        given = b""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = (value if isinstance(value, bytes) else value.encode()).strip()
        if not hmac.compare_digest(given.lower(), self._authorization.lower()):
            await _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "a bearer token is needed: authorization: Bearer TOKEN",
            )

    async def _charge(
        self, context: grpc.aio.ServicerContext, budget_id: str, subject: Mapping[str, str]
    ) -> Charge:
        """The charge (entry and subject values) a budget id and subject name."""
        entry = _entry(self.service.snapshot.config, budget_id)
        if entry is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no budget entry {budget_id!r}")
        values: dict[str, str] = {}
        for key, value in entry.subject.items():
            given = subject.get(key)
            if value == WILDCARD:
                if not given:
                    await _abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{budget_id} has one allowance per {key}: give subject {{{key!r}: ...}}",
                    )
                values[key] = given
            elif given not in (None, value):
                await _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{budget_id} is for {key}={value}, not {given}",
                )
            else:
                values[key] = value
        extra = set(subject) - set(entry.subject)
        if extra:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{budget_id} has no subject key {', '.join(sorted(extra))}"
                f" (its keys: {', '.join(sorted(entry.subject)) or 'none'})",
            )
        return Charge(entry=entry, values=tuple(sorted(values.items())))


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")  # abort raises


def _entry(config: Config, budget_id: str) -> BudgetEntry | None:
    for resource in config.budgets:
        for entry in resource.entries:
            if entry.budget_id == budget_id:
                return entry
    return None


def _policies_by_resource(config: Config) -> dict[tuple[str, str], list[pb.Policy]]:
    out: dict[tuple[str, str], list[pb.Policy]] = {}
    for policy in config.policies:
        described = pb.Policy(
            name=f"{policy.namespace}/{policy.name}",
            discovery=policy.discovery.value,
            failure_mode=policy.failure_mode.value,
            targets=[f"{t.kind} {t.namespace}/{t.name}" for t in policy.target_refs],
        )
        for resource in discovered(policy, config):
            out.setdefault((resource.namespace, resource.name), []).append(described)
    return out


def _metadata(request: pb.ExplainRequest) -> dict[str, Struct]:
    """Filter metadata by namespace, as Envoy would send it; the claims under jwt_authn's."""
    out: dict[str, Struct] = {}
    for namespace, value in request.metadata.fields.items():
        if value.HasField("struct_value"):
            out[namespace] = value.struct_value
    if request.HasField("claims"):
        jwt = Struct()
        jwt.get_or_create_struct(JWT_PAYLOAD).CopyFrom(request.claims)
        out[JWT_NAMESPACE] = jwt
    return out


def _units(entry: BudgetEntry, text: str) -> int | None:
    """A positive amount in the entry's unit as store units (nano-USD or tokens), exact."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount <= 0:
        return None
    units = amount * NANOS_PER_USD if entry.unit is Unit.USD else amount
    if units != units.to_integral_value():
        return None
    return int(units)


def _page_token(start: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"start": start}).encode()).decode()


def _page_start(token: str) -> int | None:
    try:
        start = json.loads(base64.urlsafe_b64decode(token.encode()))["start"]
    except (ValueError, KeyError, TypeError):
        return None
    return start if isinstance(start, int) and start >= 0 else None


def _loopback(peer: str) -> bool:
    """gRPC's peer string: ipv4:127.0.0.1:PORT, ipv6:[::1]:PORT, unix:PATH."""
    if peer.startswith("unix:"):
        return True
    if peer.startswith("ipv4:"):
        return peer[5:].startswith("127.")
    if peer.startswith("ipv6:"):
        host = peer[5:].rsplit("]", 1)[0].lstrip("[")
        return host == "::1" or host.startswith("::ffff:127.")
    return False


def as_json(message: Any) -> dict[str, Any]:
    """A response as the JSON grpcurl prints (for tests and tools)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
