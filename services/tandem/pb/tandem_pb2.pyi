from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALL_STATE_UNSPECIFIED: _ClassVar[CallState]
    ROUTING: _ClassVar[CallState]
    TRYING: _ClassVar[CallState]
    RINGING: _ClassVar[CallState]
    ANSWERED: _ClassVar[CallState]
    ENDED: _ClassVar[CallState]
CALL_STATE_UNSPECIFIED: CallState
ROUTING: CallState
TRYING: CallState
RINGING: CallState
ANSWERED: CallState
ENDED: CallState

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("call_id", "ingress_trunk", "called", "calling")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    INGRESS_TRUNK_FIELD_NUMBER: _ClassVar[int]
    CALLED_FIELD_NUMBER: _ClassVar[int]
    CALLING_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    ingress_trunk: str
    called: str
    calling: str
    def __init__(self, call_id: _Optional[str] = ..., ingress_trunk: _Optional[str] = ..., called: _Optional[str] = ..., calling: _Optional[str] = ...) -> None: ...

class RouteTarget(_message.Message):
    __slots__ = ("trunk", "edge", "called", "calling", "usage", "route", "suppress_caller_id", "failover_timer_s", "failover_response_codes", "forward_pai", "forward_call_history", "trunk_down", "max_ring_s", "max_call_s", "redirect", "media", "srtp", "ice", "media_timeout_s", "media_fallback", "edges")
    TRUNK_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    CALLED_FIELD_NUMBER: _ClassVar[int]
    CALLING_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    SUPPRESS_CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_TIMER_S_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_RESPONSE_CODES_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PAI_FIELD_NUMBER: _ClassVar[int]
    FORWARD_CALL_HISTORY_FIELD_NUMBER: _ClassVar[int]
    TRUNK_DOWN_FIELD_NUMBER: _ClassVar[int]
    MAX_RING_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CALL_S_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    ICE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    trunk: str
    edge: str
    called: str
    calling: str
    usage: str
    route: str
    suppress_caller_id: bool
    failover_timer_s: float
    failover_response_codes: _containers.RepeatedScalarFieldContainer[int]
    forward_pai: bool
    forward_call_history: bool
    trunk_down: bool
    max_ring_s: float
    max_call_s: float
    redirect: str
    media: str
    srtp: str
    ice: str
    media_timeout_s: float
    media_fallback: str
    edges: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, trunk: _Optional[str] = ..., edge: _Optional[str] = ..., called: _Optional[str] = ..., calling: _Optional[str] = ..., usage: _Optional[str] = ..., route: _Optional[str] = ..., suppress_caller_id: _Optional[bool] = ..., failover_timer_s: _Optional[float] = ..., failover_response_codes: _Optional[_Iterable[int]] = ..., forward_pai: _Optional[bool] = ..., forward_call_history: _Optional[bool] = ..., trunk_down: _Optional[bool] = ..., max_ring_s: _Optional[float] = ..., max_call_s: _Optional[float] = ..., redirect: _Optional[str] = ..., media: _Optional[str] = ..., srtp: _Optional[str] = ..., ice: _Optional[str] = ..., media_timeout_s: _Optional[float] = ..., media_fallback: _Optional[str] = ..., edges: _Optional[_Iterable[str]] = ...) -> None: ...

class RouteDecision(_message.Message):
    __slots__ = ("result", "status", "reason", "normalized_called", "normalized_calling", "usage", "route", "targets", "explain")
    class Result(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RESULT_UNSPECIFIED: _ClassVar[RouteDecision.Result]
        ROUTED: _ClassVar[RouteDecision.Result]
        NO_ROUTE: _ClassVar[RouteDecision.Result]
        NO_TRUNK: _ClassVar[RouteDecision.Result]
    RESULT_UNSPECIFIED: RouteDecision.Result
    ROUTED: RouteDecision.Result
    NO_ROUTE: RouteDecision.Result
    NO_TRUNK: RouteDecision.Result
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_CALLED_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_CALLING_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    result: RouteDecision.Result
    status: int
    reason: str
    normalized_called: str
    normalized_calling: str
    usage: str
    route: str
    targets: _containers.RepeatedCompositeFieldContainer[RouteTarget]
    explain: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, result: _Optional[_Union[RouteDecision.Result, str]] = ..., status: _Optional[int] = ..., reason: _Optional[str] = ..., normalized_called: _Optional[str] = ..., normalized_calling: _Optional[str] = ..., usage: _Optional[str] = ..., route: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[RouteTarget, _Mapping]]] = ..., explain: _Optional[_Iterable[str]] = ...) -> None: ...

class SipBody(_message.Message):
    __slots__ = ("content_type", "body")
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    body: bytes
    def __init__(self, content_type: _Optional[str] = ..., body: _Optional[bytes] = ...) -> None: ...

class LegCreate(_message.Message):
    __slots__ = ("target", "calling_display", "headers", "body", "max_forwards", "attempt", "sip_call_id", "owner_edge", "privacy", "anchored")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CALLING_DISPLAY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    MAX_FORWARDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SIP_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_EDGE_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    ANCHORED_FIELD_NUMBER: _ClassVar[int]
    target: RouteTarget
    calling_display: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: SipBody
    max_forwards: int
    attempt: int
    sip_call_id: str
    owner_edge: str
    privacy: str
    anchored: bool
    def __init__(self, target: _Optional[_Union[RouteTarget, _Mapping]] = ..., calling_display: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[_Union[SipBody, _Mapping]] = ..., max_forwards: _Optional[int] = ..., attempt: _Optional[int] = ..., sip_call_id: _Optional[str] = ..., owner_edge: _Optional[str] = ..., privacy: _Optional[str] = ..., anchored: _Optional[bool] = ...) -> None: ...

class LegCancel(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class LegAck(_message.Message):
    __slots__ = ("body",)
    BODY_FIELD_NUMBER: _ClassVar[int]
    body: SipBody
    def __init__(self, body: _Optional[_Union[SipBody, _Mapping]] = ...) -> None: ...

class LegBye(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class LegRequest(_message.Message):
    __slots__ = ("request_id", "method", "headers", "body")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    method: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: SipBody
    def __init__(self, request_id: _Optional[str] = ..., method: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[_Union[SipBody, _Mapping]] = ...) -> None: ...

class LegResponse(_message.Message):
    __slots__ = ("request_id", "status", "reason", "headers", "body")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    status: int
    reason: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: SipBody
    def __init__(self, request_id: _Optional[str] = ..., status: _Optional[int] = ..., reason: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[_Union[SipBody, _Mapping]] = ...) -> None: ...

class LegCommand(_message.Message):
    __slots__ = ("leg_id", "call_id", "create", "cancel", "ack", "bye", "request", "response", "quality")
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    BYE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    leg_id: str
    call_id: str
    create: LegCreate
    cancel: LegCancel
    ack: LegAck
    bye: LegBye
    request: LegRequest
    response: LegResponse
    quality: MediaQuality
    def __init__(self, leg_id: _Optional[str] = ..., call_id: _Optional[str] = ..., create: _Optional[_Union[LegCreate, _Mapping]] = ..., cancel: _Optional[_Union[LegCancel, _Mapping]] = ..., ack: _Optional[_Union[LegAck, _Mapping]] = ..., bye: _Optional[_Union[LegBye, _Mapping]] = ..., request: _Optional[_Union[LegRequest, _Mapping]] = ..., response: _Optional[_Union[LegResponse, _Mapping]] = ..., quality: _Optional[_Union[MediaQuality, _Mapping]] = ...) -> None: ...

class CommandReply(_message.Message):
    __slots__ = ("ok", "error", "failure")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    failure: str
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ..., failure: _Optional[str] = ...) -> None: ...

class LegEvent(_message.Message):
    __slots__ = ("leg_id", "call_id", "edge", "kind", "status", "reason", "sip_call_id", "body", "headers", "request", "response", "failure", "time_unix_ms", "seq", "received_status", "remote_tag", "local_tag", "transfer_target", "replaces", "wait_s")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[LegEvent.Kind]
        PROGRESS: _ClassVar[LegEvent.Kind]
        ANSWERED: _ClassVar[LegEvent.Kind]
        FAILED: _ClassVar[LegEvent.Kind]
        REQUEST: _ClassVar[LegEvent.Kind]
        RESPONSE: _ClassVar[LegEvent.Kind]
        ENDED: _ClassVar[LegEvent.Kind]
        TRANSFER: _ClassVar[LegEvent.Kind]
        RETRYING: _ClassVar[LegEvent.Kind]
    KIND_UNSPECIFIED: LegEvent.Kind
    PROGRESS: LegEvent.Kind
    ANSWERED: LegEvent.Kind
    FAILED: LegEvent.Kind
    REQUEST: LegEvent.Kind
    RESPONSE: LegEvent.Kind
    ENDED: LegEvent.Kind
    TRANSFER: LegEvent.Kind
    RETRYING: LegEvent.Kind
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SIP_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_STATUS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_TAG_FIELD_NUMBER: _ClassVar[int]
    LOCAL_TAG_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_TARGET_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    leg_id: str
    call_id: str
    edge: str
    kind: LegEvent.Kind
    status: int
    reason: str
    sip_call_id: str
    body: SipBody
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    request: LegRequest
    response: LegResponse
    failure: str
    time_unix_ms: int
    seq: int
    received_status: int
    remote_tag: str
    local_tag: str
    transfer_target: RouteTarget
    replaces: str
    wait_s: float
    def __init__(self, leg_id: _Optional[str] = ..., call_id: _Optional[str] = ..., edge: _Optional[str] = ..., kind: _Optional[_Union[LegEvent.Kind, str]] = ..., status: _Optional[int] = ..., reason: _Optional[str] = ..., sip_call_id: _Optional[str] = ..., body: _Optional[_Union[SipBody, _Mapping]] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., request: _Optional[_Union[LegRequest, _Mapping]] = ..., response: _Optional[_Union[LegResponse, _Mapping]] = ..., failure: _Optional[str] = ..., time_unix_ms: _Optional[int] = ..., seq: _Optional[int] = ..., received_status: _Optional[int] = ..., remote_tag: _Optional[str] = ..., local_tag: _Optional[str] = ..., transfer_target: _Optional[_Union[RouteTarget, _Mapping]] = ..., replaces: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...

class CallEvent(_message.Message):
    __slots__ = ("call_id", "kind", "seq", "time_unix_ms", "edge", "ingress_trunk", "sip_call_id", "called", "calling", "leg_id", "trunk", "status", "reason", "ended_by", "trace_id", "usage", "route", "normalized_called", "attempt", "failure", "end_reason", "received_status", "transferred_from", "transferred_to", "quality", "media", "media_note", "leg_edge")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[CallEvent.Kind]
        STARTED: _ClassVar[CallEvent.Kind]
        ROUTED: _ClassVar[CallEvent.Kind]
        LEG_ATTEMPT: _ClassVar[CallEvent.Kind]
        LEG_PROGRESS: _ClassVar[CallEvent.Kind]
        LEG_ANSWERED: _ClassVar[CallEvent.Kind]
        LEG_FAILED: _ClassVar[CallEvent.Kind]
        ANSWERED: _ClassVar[CallEvent.Kind]
        ENDED: _ClassVar[CallEvent.Kind]
    KIND_UNSPECIFIED: CallEvent.Kind
    STARTED: CallEvent.Kind
    ROUTED: CallEvent.Kind
    LEG_ATTEMPT: CallEvent.Kind
    LEG_PROGRESS: CallEvent.Kind
    LEG_ANSWERED: CallEvent.Kind
    LEG_FAILED: CallEvent.Kind
    ANSWERED: CallEvent.Kind
    ENDED: CallEvent.Kind
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    INGRESS_TRUNK_FIELD_NUMBER: _ClassVar[int]
    SIP_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CALLED_FIELD_NUMBER: _ClassVar[int]
    CALLING_FIELD_NUMBER: _ClassVar[int]
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    TRUNK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENDED_BY_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_CALLED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_STATUS_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_FROM_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_TO_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_NOTE_FIELD_NUMBER: _ClassVar[int]
    LEG_EDGE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    kind: CallEvent.Kind
    seq: int
    time_unix_ms: int
    edge: str
    ingress_trunk: str
    sip_call_id: str
    called: str
    calling: str
    leg_id: str
    trunk: str
    status: int
    reason: str
    ended_by: str
    trace_id: str
    usage: str
    route: str
    normalized_called: str
    attempt: int
    failure: str
    end_reason: str
    received_status: int
    transferred_from: str
    transferred_to: str
    quality: _containers.RepeatedCompositeFieldContainer[MediaQuality]
    media: str
    media_note: str
    leg_edge: str
    def __init__(self, call_id: _Optional[str] = ..., kind: _Optional[_Union[CallEvent.Kind, str]] = ..., seq: _Optional[int] = ..., time_unix_ms: _Optional[int] = ..., edge: _Optional[str] = ..., ingress_trunk: _Optional[str] = ..., sip_call_id: _Optional[str] = ..., called: _Optional[str] = ..., calling: _Optional[str] = ..., leg_id: _Optional[str] = ..., trunk: _Optional[str] = ..., status: _Optional[int] = ..., reason: _Optional[str] = ..., ended_by: _Optional[str] = ..., trace_id: _Optional[str] = ..., usage: _Optional[str] = ..., route: _Optional[str] = ..., normalized_called: _Optional[str] = ..., attempt: _Optional[int] = ..., failure: _Optional[str] = ..., end_reason: _Optional[str] = ..., received_status: _Optional[int] = ..., transferred_from: _Optional[str] = ..., transferred_to: _Optional[str] = ..., quality: _Optional[_Iterable[_Union[MediaQuality, _Mapping]]] = ..., media: _Optional[str] = ..., media_note: _Optional[str] = ..., leg_edge: _Optional[str] = ...) -> None: ...

class MediaQuality(_message.Message):
    __slots__ = ("leg_id", "rtpengine", "protocol", "crypto", "packets_from", "bytes_from", "packets_to", "bytes_to", "packets_lost", "loss_percent", "jitter_ms", "rtt_ms", "mos", "mos_min", "errors", "lost")
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    RTPENGINE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CRYPTO_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FROM_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_FIELD_NUMBER: _ClassVar[int]
    PACKETS_TO_FIELD_NUMBER: _ClassVar[int]
    BYTES_TO_FIELD_NUMBER: _ClassVar[int]
    PACKETS_LOST_FIELD_NUMBER: _ClassVar[int]
    LOSS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    JITTER_MS_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    MOS_FIELD_NUMBER: _ClassVar[int]
    MOS_MIN_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    leg_id: str
    rtpengine: str
    protocol: str
    crypto: str
    packets_from: int
    bytes_from: int
    packets_to: int
    bytes_to: int
    packets_lost: int
    loss_percent: float
    jitter_ms: float
    rtt_ms: float
    mos: float
    mos_min: float
    errors: int
    lost: bool
    def __init__(self, leg_id: _Optional[str] = ..., rtpengine: _Optional[str] = ..., protocol: _Optional[str] = ..., crypto: _Optional[str] = ..., packets_from: _Optional[int] = ..., bytes_from: _Optional[int] = ..., packets_to: _Optional[int] = ..., bytes_to: _Optional[int] = ..., packets_lost: _Optional[int] = ..., loss_percent: _Optional[float] = ..., jitter_ms: _Optional[float] = ..., rtt_ms: _Optional[float] = ..., mos: _Optional[float] = ..., mos_min: _Optional[float] = ..., errors: _Optional[int] = ..., lost: _Optional[bool] = ...) -> None: ...

class Hangup(_message.Message):
    __slots__ = ("call_id", "reason")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    reason: str
    def __init__(self, call_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class EdgeHeartbeat(_message.Message):
    __slots__ = ("edge", "time_unix_ms", "active_calls", "draining", "calls")
    EDGE_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CALLS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    edge: str
    time_unix_ms: int
    active_calls: int
    draining: bool
    calls: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, edge: _Optional[str] = ..., time_unix_ms: _Optional[int] = ..., active_calls: _Optional[int] = ..., draining: _Optional[bool] = ..., calls: _Optional[_Iterable[str]] = ...) -> None: ...

class TrunkHealth(_message.Message):
    __slots__ = ("trunk", "edge", "up", "reason", "last_probe_unix_ms", "failed_probes")
    TRUNK_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_PROBE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FAILED_PROBES_FIELD_NUMBER: _ClassVar[int]
    trunk: str
    edge: str
    up: bool
    reason: str
    last_probe_unix_ms: int
    failed_probes: int
    def __init__(self, trunk: _Optional[str] = ..., edge: _Optional[str] = ..., up: _Optional[bool] = ..., reason: _Optional[str] = ..., last_probe_unix_ms: _Optional[int] = ..., failed_probes: _Optional[int] = ...) -> None: ...

class TrunkCounters(_message.Message):
    __slots__ = ("trunk", "active_in", "active_out", "attempts", "answered", "updated_unix_ms", "failures", "peak_active")
    class FailuresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    TRUNK_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_IN_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_OUT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    PEAK_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    trunk: str
    active_in: int
    active_out: int
    attempts: int
    answered: int
    updated_unix_ms: int
    failures: _containers.ScalarMap[int, int]
    peak_active: int
    def __init__(self, trunk: _Optional[str] = ..., active_in: _Optional[int] = ..., active_out: _Optional[int] = ..., attempts: _Optional[int] = ..., answered: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., failures: _Optional[_Mapping[int, int]] = ..., peak_active: _Optional[int] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("leg_id", "trunk", "sip_call_id", "called", "calling", "status", "reason", "start_unix_ms", "end_unix_ms", "answer_unix_ms", "attempt", "received_status", "media", "edge")
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    TRUNK_FIELD_NUMBER: _ClassVar[int]
    SIP_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CALLED_FIELD_NUMBER: _ClassVar[int]
    CALLING_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_STATUS_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    leg_id: str
    trunk: str
    sip_call_id: str
    called: str
    calling: str
    status: int
    reason: str
    start_unix_ms: int
    end_unix_ms: int
    answer_unix_ms: int
    attempt: int
    received_status: int
    media: MediaQuality
    edge: str
    def __init__(self, leg_id: _Optional[str] = ..., trunk: _Optional[str] = ..., sip_call_id: _Optional[str] = ..., called: _Optional[str] = ..., calling: _Optional[str] = ..., status: _Optional[int] = ..., reason: _Optional[str] = ..., start_unix_ms: _Optional[int] = ..., end_unix_ms: _Optional[int] = ..., answer_unix_ms: _Optional[int] = ..., attempt: _Optional[int] = ..., received_status: _Optional[int] = ..., media: _Optional[_Union[MediaQuality, _Mapping]] = ..., edge: _Optional[str] = ...) -> None: ...

class ActiveCall(_message.Message):
    __slots__ = ("call_id", "edge", "ingress_trunk", "sip_call_id", "called", "calling", "state", "invite_unix_ms", "answer_unix_ms", "attempts", "trace_id", "last_seq", "timeline", "normalized_called", "usage", "route", "transferred_from", "media", "media_note")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    INGRESS_TRUNK_FIELD_NUMBER: _ClassVar[int]
    SIP_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CALLED_FIELD_NUMBER: _ClassVar[int]
    CALLING_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INVITE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_CALLED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_FROM_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_NOTE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    edge: str
    ingress_trunk: str
    sip_call_id: str
    called: str
    calling: str
    state: CallState
    invite_unix_ms: int
    answer_unix_ms: int
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    trace_id: str
    last_seq: int
    timeline: _containers.RepeatedCompositeFieldContainer[CallEvent]
    normalized_called: str
    usage: str
    route: str
    transferred_from: str
    media: str
    media_note: str
    def __init__(self, call_id: _Optional[str] = ..., edge: _Optional[str] = ..., ingress_trunk: _Optional[str] = ..., sip_call_id: _Optional[str] = ..., called: _Optional[str] = ..., calling: _Optional[str] = ..., state: _Optional[_Union[CallState, str]] = ..., invite_unix_ms: _Optional[int] = ..., answer_unix_ms: _Optional[int] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., trace_id: _Optional[str] = ..., last_seq: _Optional[int] = ..., timeline: _Optional[_Iterable[_Union[CallEvent, _Mapping]]] = ..., normalized_called: _Optional[str] = ..., usage: _Optional[str] = ..., route: _Optional[str] = ..., transferred_from: _Optional[str] = ..., media: _Optional[str] = ..., media_note: _Optional[str] = ...) -> None: ...

class Cdr(_message.Message):
    __slots__ = ("call_id", "sip_call_ids", "ingress_trunk", "egress_trunk", "attempts", "called_received", "calling_received", "called_sent", "calling_sent", "invite_unix_ms", "answer_unix_ms", "end_unix_ms", "duration_s", "final_status", "final_reason", "ended_by", "failover_count", "trace_id", "edge", "usage", "route", "end_reason", "transferred_from", "transferred_to", "ingress_media", "media", "media_note")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SIP_CALL_IDS_FIELD_NUMBER: _ClassVar[int]
    INGRESS_TRUNK_FIELD_NUMBER: _ClassVar[int]
    EGRESS_TRUNK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CALLED_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    CALLING_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    CALLED_SENT_FIELD_NUMBER: _ClassVar[int]
    CALLING_SENT_FIELD_NUMBER: _ClassVar[int]
    INVITE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    FINAL_STATUS_FIELD_NUMBER: _ClassVar[int]
    FINAL_REASON_FIELD_NUMBER: _ClassVar[int]
    ENDED_BY_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_FROM_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_TO_FIELD_NUMBER: _ClassVar[int]
    INGRESS_MEDIA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_NOTE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    sip_call_ids: _containers.RepeatedScalarFieldContainer[str]
    ingress_trunk: str
    egress_trunk: str
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    called_received: str
    calling_received: str
    called_sent: str
    calling_sent: str
    invite_unix_ms: int
    answer_unix_ms: int
    end_unix_ms: int
    duration_s: float
    final_status: int
    final_reason: str
    ended_by: str
    failover_count: int
    trace_id: str
    edge: str
    usage: str
    route: str
    end_reason: str
    transferred_from: str
    transferred_to: str
    ingress_media: MediaQuality
    media: str
    media_note: str
    def __init__(self, call_id: _Optional[str] = ..., sip_call_ids: _Optional[_Iterable[str]] = ..., ingress_trunk: _Optional[str] = ..., egress_trunk: _Optional[str] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., called_received: _Optional[str] = ..., calling_received: _Optional[str] = ..., called_sent: _Optional[str] = ..., calling_sent: _Optional[str] = ..., invite_unix_ms: _Optional[int] = ..., answer_unix_ms: _Optional[int] = ..., end_unix_ms: _Optional[int] = ..., duration_s: _Optional[float] = ..., final_status: _Optional[int] = ..., final_reason: _Optional[str] = ..., ended_by: _Optional[str] = ..., failover_count: _Optional[int] = ..., trace_id: _Optional[str] = ..., edge: _Optional[str] = ..., usage: _Optional[str] = ..., route: _Optional[str] = ..., end_reason: _Optional[str] = ..., transferred_from: _Optional[str] = ..., transferred_to: _Optional[str] = ..., ingress_media: _Optional[_Union[MediaQuality, _Mapping]] = ..., media: _Optional[str] = ..., media_note: _Optional[str] = ...) -> None: ...

class SipMessage(_message.Message):
    __slots__ = ("call_id", "leg_id", "edge", "trunk", "direction", "transport", "src", "dst", "time_unix_us", "sip_call_id", "method", "status", "reason", "cseq", "data")
    class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DIRECTION_UNSPECIFIED: _ClassVar[SipMessage.Direction]
        IN: _ClassVar[SipMessage.Direction]
        OUT: _ClassVar[SipMessage.Direction]
    DIRECTION_UNSPECIFIED: SipMessage.Direction
    IN: SipMessage.Direction
    OUT: SipMessage.Direction
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    TRUNK_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    SIP_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CSEQ_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    leg_id: str
    edge: str
    trunk: str
    direction: SipMessage.Direction
    transport: str
    src: str
    dst: str
    time_unix_us: int
    sip_call_id: str
    method: str
    status: int
    reason: str
    cseq: int
    data: bytes
    def __init__(self, call_id: _Optional[str] = ..., leg_id: _Optional[str] = ..., edge: _Optional[str] = ..., trunk: _Optional[str] = ..., direction: _Optional[_Union[SipMessage.Direction, str]] = ..., transport: _Optional[str] = ..., src: _Optional[str] = ..., dst: _Optional[str] = ..., time_unix_us: _Optional[int] = ..., sip_call_id: _Optional[str] = ..., method: _Optional[str] = ..., status: _Optional[int] = ..., reason: _Optional[str] = ..., cseq: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class SipCapture(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[SipMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[SipMessage, _Mapping]]] = ...) -> None: ...
