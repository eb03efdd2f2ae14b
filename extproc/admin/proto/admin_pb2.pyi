from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListBudgetsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("name", "discovery", "failure_mode", "targets")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MODE_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    discovery: str
    failure_mode: str
    targets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., discovery: _Optional[str] = ..., failure_mode: _Optional[str] = ..., targets: _Optional[_Iterable[str]] = ...) -> None: ...

class BudgetEntry(_message.Message):
    __slots__ = ("budget_id", "namespace", "resource", "name", "unit", "limit", "window", "window_seconds", "action", "subject", "policies")
    class SubjectEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    budget_id: str
    namespace: str
    resource: str
    name: str
    unit: str
    limit: str
    window: str
    window_seconds: int
    action: str
    subject: _containers.ScalarMap[str, str]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, budget_id: _Optional[str] = ..., namespace: _Optional[str] = ..., resource: _Optional[str] = ..., name: _Optional[str] = ..., unit: _Optional[str] = ..., limit: _Optional[str] = ..., window: _Optional[str] = ..., window_seconds: _Optional[int] = ..., action: _Optional[str] = ..., subject: _Optional[_Mapping[str, str]] = ..., policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...

class ListBudgetsResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[BudgetEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[BudgetEntry, _Mapping]]] = ...) -> None: ...

class GetSpendRequest(_message.Message):
    __slots__ = ("budget_id", "subject", "namespace", "page_size", "page_token")
    class SubjectEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    budget_id: str
    subject: _containers.ScalarMap[str, str]
    namespace: str
    page_size: int
    page_token: str
    def __init__(self, budget_id: _Optional[str] = ..., subject: _Optional[_Mapping[str, str]] = ..., namespace: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SpendRow(_message.Message):
    __slots__ = ("budget_id", "subject", "unit", "window", "action", "spend", "held", "limit", "remaining", "reset_seconds", "blocked")
    class SubjectEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    budget_id: str
    subject: _containers.ScalarMap[str, str]
    unit: str
    window: str
    action: str
    spend: str
    held: str
    limit: str
    remaining: str
    reset_seconds: int
    blocked: bool
    def __init__(self, budget_id: _Optional[str] = ..., subject: _Optional[_Mapping[str, str]] = ..., unit: _Optional[str] = ..., window: _Optional[str] = ..., action: _Optional[str] = ..., spend: _Optional[str] = ..., held: _Optional[str] = ..., limit: _Optional[str] = ..., remaining: _Optional[str] = ..., reset_seconds: _Optional[int] = ..., blocked: _Optional[bool] = ...) -> None: ...

class GetSpendResponse(_message.Message):
    __slots__ = ("rows", "next_page_token")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[SpendRow]
    next_page_token: str
    def __init__(self, rows: _Optional[_Iterable[_Union[SpendRow, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("route", "gateway", "headers", "claims", "body", "metadata")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    route: str
    gateway: str
    headers: _containers.ScalarMap[str, str]
    claims: _struct_pb2.Struct
    body: str
    metadata: _struct_pb2.Struct
    def __init__(self, route: _Optional[str] = ..., gateway: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., claims: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., body: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ExplainEntry(_message.Message):
    __slots__ = ("budget_id", "subject", "action", "unit", "spend", "held", "limit", "hold", "over_limit", "reset_seconds")
    class SubjectEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    OVER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RESET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    budget_id: str
    subject: _containers.ScalarMap[str, str]
    action: str
    unit: str
    spend: str
    held: str
    limit: str
    hold: str
    over_limit: bool
    reset_seconds: int
    def __init__(self, budget_id: _Optional[str] = ..., subject: _Optional[_Mapping[str, str]] = ..., action: _Optional[str] = ..., unit: _Optional[str] = ..., spend: _Optional[str] = ..., held: _Optional[str] = ..., limit: _Optional[str] = ..., hold: _Optional[str] = ..., over_limit: _Optional[bool] = ..., reset_seconds: _Optional[int] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("enforced", "dimensions", "entries", "decision", "blocking_budget_id", "retry_after_seconds", "failure_mode", "api", "model", "detail")
    class DimensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENFORCED_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    BLOCKING_BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MODE_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    enforced: bool
    dimensions: _containers.ScalarMap[str, str]
    entries: _containers.RepeatedCompositeFieldContainer[ExplainEntry]
    decision: str
    blocking_budget_id: str
    retry_after_seconds: int
    failure_mode: str
    api: str
    model: str
    detail: str
    def __init__(self, enforced: _Optional[bool] = ..., dimensions: _Optional[_Mapping[str, str]] = ..., entries: _Optional[_Iterable[_Union[ExplainEntry, _Mapping]]] = ..., decision: _Optional[str] = ..., blocking_budget_id: _Optional[str] = ..., retry_after_seconds: _Optional[int] = ..., failure_mode: _Optional[str] = ..., api: _Optional[str] = ..., model: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListHoldsRequest(_message.Message):
    __slots__ = ("budget_id", "subject")
    class SubjectEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    budget_id: str
    subject: _containers.ScalarMap[str, str]
    def __init__(self, budget_id: _Optional[str] = ..., subject: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Hold(_message.Message):
    __slots__ = ("hold_id", "amount", "expires_in_seconds")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    amount: str
    expires_in_seconds: int
    def __init__(self, hold_id: _Optional[str] = ..., amount: _Optional[str] = ..., expires_in_seconds: _Optional[int] = ...) -> None: ...

class ListHoldsResponse(_message.Message):
    __slots__ = ("budget_id", "subject", "holds")
    class SubjectEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    budget_id: str
    subject: _containers.ScalarMap[str, str]
    holds: _containers.RepeatedCompositeFieldContainer[Hold]
    def __init__(self, budget_id: _Optional[str] = ..., subject: _Optional[_Mapping[str, str]] = ..., holds: _Optional[_Iterable[_Union[Hold, _Mapping]]] = ...) -> None: ...

class AdjustSpendRequest(_message.Message):
    __slots__ = ("budget_id", "subject", "credit", "reset", "reason")
    class SubjectEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    budget_id: str
    subject: _containers.ScalarMap[str, str]
    credit: str
    reset: bool
    reason: str
    def __init__(self, budget_id: _Optional[str] = ..., subject: _Optional[_Mapping[str, str]] = ..., credit: _Optional[str] = ..., reset: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class AdjustSpendResponse(_message.Message):
    __slots__ = ("spend_before", "spend_after")
    SPEND_BEFORE_FIELD_NUMBER: _ClassVar[int]
    SPEND_AFTER_FIELD_NUMBER: _ClassVar[int]
    spend_before: str
    spend_after: str
    def __init__(self, spend_before: _Optional[str] = ..., spend_after: _Optional[str] = ...) -> None: ...
