from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetModelStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RejectedVersion(_message.Message):
    __slots__ = ("version", "reason")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version: int
    reason: str
    def __init__(self, version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class GetModelStatusResponse(_message.Message):
    __slots__ = ("model", "policy", "serving_version", "model_version", "versions", "rejected", "rollout")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    model: str
    policy: str
    serving_version: int
    model_version: str
    versions: _containers.RepeatedScalarFieldContainer[int]
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedVersion]
    rollout: RolloutStatus
    def __init__(self, model: _Optional[str] = ..., policy: _Optional[str] = ..., serving_version: _Optional[int] = ..., model_version: _Optional[str] = ..., versions: _Optional[_Iterable[int]] = ..., rejected: _Optional[_Iterable[_Union[RejectedVersion, _Mapping]]] = ..., rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class RolloutLimits(_message.Message):
    __slots__ = ("max_error_rate", "max_p99_ms", "min_overlap", "min_requests", "max_consecutive_failures")
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    max_error_rate: float
    max_p99_ms: float
    min_overlap: float
    min_requests: int
    max_consecutive_failures: int
    def __init__(self, max_error_rate: _Optional[float] = ..., max_p99_ms: _Optional[float] = ..., min_overlap: _Optional[float] = ..., min_requests: _Optional[int] = ..., max_consecutive_failures: _Optional[int] = ...) -> None: ...

class RolloutAnswers(_message.Message):
    __slots__ = ("requests", "errors", "bad_answers", "mean_ms", "p99_ms")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    BAD_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    errors: int
    bad_answers: int
    mean_ms: float
    p99_ms: float
    def __init__(self, requests: _Optional[int] = ..., errors: _Optional[int] = ..., bad_answers: _Optional[int] = ..., mean_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("version", "model_version", "mode", "fraction", "state", "reason", "candidate", "stable", "compared", "overlap", "drift", "dropped", "compare_errors", "limits", "started_at", "ended_at", "promote_after_s")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    COMPARE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    version: int
    model_version: str
    mode: str
    fraction: float
    state: str
    reason: str
    candidate: RolloutAnswers
    stable: RolloutAnswers
    compared: int
    overlap: float
    drift: float
    dropped: int
    compare_errors: int
    limits: RolloutLimits
    started_at: float
    ended_at: float
    promote_after_s: float
    def __init__(self, version: _Optional[int] = ..., model_version: _Optional[str] = ..., mode: _Optional[str] = ..., fraction: _Optional[float] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., candidate: _Optional[_Union[RolloutAnswers, _Mapping]] = ..., stable: _Optional[_Union[RolloutAnswers, _Mapping]] = ..., compared: _Optional[int] = ..., overlap: _Optional[float] = ..., drift: _Optional[float] = ..., dropped: _Optional[int] = ..., compare_errors: _Optional[int] = ..., limits: _Optional[_Union[RolloutLimits, _Mapping]] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., promote_after_s: _Optional[float] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("version", "mode", "fraction", "limits", "promote_after_s")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    version: int
    mode: str
    fraction: float
    limits: RolloutLimits
    promote_after_s: float
    def __init__(self, version: _Optional[int] = ..., mode: _Optional[str] = ..., fraction: _Optional[float] = ..., limits: _Optional[_Union[RolloutLimits, _Mapping]] = ..., promote_after_s: _Optional[float] = ...) -> None: ...

class StartRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: RolloutStatus
    def __init__(self, rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class PromoteRolloutRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PromoteRolloutResponse(_message.Message):
    __slots__ = ("serving_version", "model_version", "rollout")
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    serving_version: int
    model_version: str
    rollout: RolloutStatus
    def __init__(self, serving_version: _Optional[int] = ..., model_version: _Optional[str] = ..., rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class AbortRolloutRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class AbortRolloutResponse(_message.Message):
    __slots__ = ("serving_version", "model_version", "rollout")
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    serving_version: int
    model_version: str
    rollout: RolloutStatus
    def __init__(self, serving_version: _Optional[int] = ..., model_version: _Optional[str] = ..., rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class LoadModelVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class LoadModelVersionResponse(_message.Message):
    __slots__ = ("serving_version", "model_version")
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    serving_version: int
    model_version: str
    def __init__(self, serving_version: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class RollbackModelRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class RollbackModelResponse(_message.Message):
    __slots__ = ("serving_version", "model_version")
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    serving_version: int
    model_version: str
    def __init__(self, serving_version: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...
