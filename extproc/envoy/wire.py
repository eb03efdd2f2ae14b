"""Envoy ext_proc wire types: reading requests and building the one reply each needs.

Header values arrive in `raw_value` and are written there too: setting only `value`
gives an empty header, setting both fails the request (FIELD-NOTES).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import text_format
from google.protobuf.struct_pb2 import Struct, Value

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse

EXT_PROC_ATTRIBUTES = "envoy.filters.http.ext_proc"
ROUTE_ATTRIBUTE = "xds.route_name"
# Envoy Gateway writes the Gateway a virtual host belongs to in the virtual host's
# metadata: `envoy-gateway: {resources: [{kind: Gateway, namespace, name, sectionName}]}`.
VIRTUAL_HOST_METADATA_ATTRIBUTE = "xds.virtual_host_metadata"
ENVOY_GATEWAY_METADATA = "envoy-gateway"
# The gateway a stream comes through, `NAMESPACE/NAME`, as gRPC metadata on the ext_proc
# call: what a plain Envoy config or an Istio EnvoyFilter sets per gateway.
GATEWAY_METADATA = "x-extproc-gateway"

_Mode = processing_mode_pb2.ProcessingMode

# Replies that change nothing, built once: the hot path returns these shared objects.
CONTINUE_REQUEST_HEADERS = ProcessingResponse(request_headers=pb.HeadersResponse())
CONTINUE_RESPONSE_HEADERS = ProcessingResponse(response_headers=pb.HeadersResponse())
CONTINUE_REQUEST_BODY = ProcessingResponse(request_body=pb.BodyResponse())
CONTINUE_RESPONSE_BODY = ProcessingResponse(response_body=pb.BodyResponse())
CONTINUE_REQUEST_TRAILERS = ProcessingResponse(request_trailers=pb.TrailersResponse())
CONTINUE_RESPONSE_TRAILERS = ProcessingResponse(response_trailers=pb.TrailersResponse())

# A route no policy targets: stop sending us its bodies (headers still arrive; the
# mode override is honoured only with allow_mode_override, and is harmless without).
UNTOUCHED_REQUEST_HEADERS = ProcessingResponse(
    request_headers=pb.HeadersResponse(),
    mode_override=_Mode(
        request_body_mode=_Mode.NONE,
        response_header_mode=_Mode.SKIP,
        response_body_mode=_Mode.NONE,
        request_trailer_mode=_Mode.SKIP,
        response_trailer_mode=_Mode.SKIP,
    ),
)
# An enforced request whose usage is read from the response body alone: its response
# headers are not sent (one blocking message fewer a request); the body comes STREAMED, so
# an SSE response streams through and a JSON one arrives in its chunks (usually one). The
# request itself tells whether the response streams, and asks the upstream for identity.
# Envoy takes an override whole: an unset body mode is NONE (no body), so the request body
# mode is restated (BUFFERED, as every config here has it).
_BODY_ONLY_MODE = _Mode(
    request_body_mode=_Mode.BUFFERED,
    response_header_mode=_Mode.SKIP,
    response_body_mode=_Mode.STREAMED,
    request_trailer_mode=_Mode.SKIP,
    response_trailer_mode=_Mode.SKIP,
)
BODY_ONLY_REQUEST_HEADERS = ProcessingResponse(
    request_headers=pb.HeadersResponse(), mode_override=_BODY_ONLY_MODE
)
# A request whose response nothing reads (an API without a parser): no response messages.
NO_RESPONSE_REQUEST_HEADERS = ProcessingResponse(
    request_headers=pb.HeadersResponse(),
    mode_override=_Mode(
        request_body_mode=_Mode.BUFFERED,
        response_header_mode=_Mode.SKIP,
        response_body_mode=_Mode.NONE,
        request_trailer_mode=_Mode.SKIP,
        response_trailer_mode=_Mode.SKIP,
    ),
)
# An SSE response: take its body as it streams rather than buffered whole.
STREAM_RESPONSE_HEADERS = ProcessingResponse(
    response_headers=pb.HeadersResponse(),
    mode_override=_Mode(
        response_body_mode=_Mode.STREAMED,
        request_trailer_mode=_Mode.SKIP,
        response_trailer_mode=_Mode.SKIP,
    ),
)

_CONTINUE_BY_KIND = {
    "request_headers": CONTINUE_REQUEST_HEADERS,
    "response_headers": CONTINUE_RESPONSE_HEADERS,
    "request_body": CONTINUE_REQUEST_BODY,
    "response_body": CONTINUE_RESPONSE_BODY,
    "request_trailers": CONTINUE_REQUEST_TRAILERS,
    "response_trailers": CONTINUE_RESPONSE_TRAILERS,
}


def continue_reply(kind: str) -> ProcessingResponse:
    """The no-op reply of the type matching a message kind (exactly one per message)."""
    return _CONTINUE_BY_KIND[kind]


def header_map(headers: base_pb2.HeaderMap) -> dict[str, str]:
    """Lower-case names to values; a repeated header keeps its values comma-joined."""
    out: dict[str, str] = {}
    for h in headers.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        key = h.key.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def route_and_gateway(request: ProcessingRequest) -> tuple[str | None, str]:
    """The route name (None when Envoy sent none) and the `NAMESPACE/NAME` of the Gateway
    in the `xds.virtual_host_metadata` attribute as Envoy Gateway writes it ("" when the
    attribute or the Gateway is not there), read in one pass over the attributes."""
    attrs = request.attributes.get(EXT_PROC_ATTRIBUTES)
    if attrs is None:
        return None, ""
    fields = attrs.fields
    route = fields.get(ROUTE_ATTRIBUTE)
    # Most configs send the route name alone: then skip the (costly) second lookup.
    metadata = fields.get(VIRTUAL_HOST_METADATA_ATTRIBUTE) if len(fields) > 1 else None
    return (
        route.string_value if route is not None else None,
        _gateway_in_metadata(metadata.string_value) if metadata is not None else "",
    )


@functools.lru_cache(maxsize=1024)  # one text per virtual host: parsed once each
def _gateway_in_metadata(text: str) -> str:
    # Envoy 1.40 sends a metadata attribute as the message's protobuf text format.
    metadata = base_pb2.Metadata()
    try:
        text_format.Parse(text, metadata, allow_unknown_field=True)
    except text_format.ParseError:
        return ""
    if ENVOY_GATEWAY_METADATA not in metadata.filter_metadata:
        return ""
    resources = metadata.filter_metadata[ENVOY_GATEWAY_METADATA].fields.get("resources")
    if resources is None:
        return ""
    for item in resources.list_value.values:
        fields = item.struct_value.fields
        namespace, name = _text(fields, "namespace"), _text(fields, "name")
        if _text(fields, "kind") == "Gateway" and namespace and name:
            return f"{namespace}/{name}"
    return ""


def _text(fields: Mapping[str, Value], key: str) -> str:
    value = fields.get(key)
    return value.string_value if value is not None else ""


def invocation_gateway(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The gateway identity in the ext_proc stream's gRPC metadata (`GATEWAY_METADATA`,
    set by the filter's `grpc_service.initial_metadata`), or ""."""
    for key, value in metadata or ():
        if key == GATEWAY_METADATA:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


def attribute_strings(request: ProcessingRequest) -> dict[str, str]:
    attrs = request.attributes.get(EXT_PROC_ATTRIBUTES)
    if attrs is None:
        return {}
    out: dict[str, str] = {}
    for name, value in attrs.fields.items():
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            out[name] = value.string_value
        elif kind == "number_value":
            n = value.number_value
            out[name] = str(int(n)) if n.is_integer() else str(n)
        elif kind == "bool_value":
            out[name] = "true" if value.bool_value else "false"
    return out


def _header_options(headers: Iterable[tuple[str, str]]) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, raw_value=v.encode()),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for k, v in headers
    ]


def immediate(status: int, headers: Mapping[str, str], body: bytes, details: str) -> ProcessingResponse:
    return ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=pb.HeaderMutation(set_headers=_header_options(headers.items())),
            body=body,
            details=details,
        )
    )


def set_request_headers(headers: Mapping[str, str], *, body_only: bool = False) -> ProcessingResponse:
    """A request-headers reply that overwrites (or adds) these headers; `body_only`: with
    BODY_ONLY_REQUEST_HEADERS' mode override."""
    reply = ProcessingResponse(
        request_headers=pb.HeadersResponse(
            response=pb.CommonResponse(
                header_mutation=pb.HeaderMutation(set_headers=_header_options(headers.items()))
            )
        )
    )
    if body_only:
        reply.mode_override.CopyFrom(_BODY_ONLY_MODE)
    return reply


def replace_request_body(body: bytes) -> ProcessingResponse:
    """A buffered request body replaced whole, with its content-length to match."""
    return ProcessingResponse(
        request_body=pb.BodyResponse(
            response=pb.CommonResponse(
                header_mutation=pb.HeaderMutation(
                    set_headers=_header_options([("content-length", str(len(body)))])
                ),
                body_mutation=pb.BodyMutation(body=body),
            )
        )
    )


def response_body_reply(body: bytes | None, metadata: Struct | None) -> ProcessingResponse:
    """A response-body reply: the chunk replaced when `body` is given, plus dynamic metadata."""
    common = pb.CommonResponse()
    if body is not None:
        common.body_mutation.body = body
    reply = ProcessingResponse(response_body=pb.BodyResponse(response=common))
    if metadata is not None:
        reply.dynamic_metadata.CopyFrom(metadata)
    return reply


def metadata_struct(namespace: str, values: Mapping[str, str | int]) -> Struct:
    s = Struct()
    s.get_or_create_struct(namespace).update(dict(values))
    return s
