"""What the clients return and accept: small frozen dataclasses, their conversions from and to
`recsys.v1` messages, and the one mapping of a failed call to the `recsys.errors` tree."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from recsys import errors
from recsys.feature_values import from_proto_map, to_proto_map
from recsys.v1 import admin_pb2, features_pb2, inference_pb2, types_pb2

__all__ = [
    "Attribution",
    "FeatureContract",
    "Interaction",
    "ItemFeatures",
    "ModelStatus",
    "Recommendation",
    "Recorded",
    "RolloutStatus",
    "ScoredItem",
    "Scores",
    "ServingChange",
    "UserFeatures",
]


@dataclass(frozen=True)
class Attribution:
    """One input's signed contribution to an item's score: a history item id or a feature name."""

    name: str
    contribution: float
    title: str = ""


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    title: str = ""
    because_items: tuple[Attribution, ...] = ()  # with explain=True, strongest first
    because_features: tuple[Attribution, ...] = ()  # with explain=True, feature-based rankers only


@dataclass(frozen=True)
class Recommendation:
    """Top-k items, best first; `source` is "model", "popularity" or "request_history"."""

    items: tuple[ScoredItem, ...]
    model_version: str
    source: str
    degraded: bool


@dataclass(frozen=True)
class Scores:
    """Scores in the order asked; -inf for the ids in `unknown_item_ids`."""

    scores: tuple[float, ...]
    unknown_item_ids: tuple[str, ...]
    model_version: str
    source: str
    degraded: bool


@dataclass(frozen=True)
class Interaction:
    """One behaviour event (timestamp in Unix seconds); a repeated `event_id` is ignored;
    `event` is its kind ("view", "purchase", ...; "" for none)."""

    user_id: str
    item_id: str
    timestamp: int
    event_id: str = ""
    event: str = ""


@dataclass(frozen=True)
class Recorded:
    recorded: int  # events newly stored
    duplicates: int  # events already held (same event id, or same user, item and timestamp)


@dataclass(frozen=True)
class UserFeatures:
    """A user's features and history (oldest first); `found` False for an unknown user."""

    user_id: str
    found: bool
    history: tuple[str, ...]
    history_timestamps: tuple[int, ...]
    features: dict[str, Any]
    updated_at: int
    history_events: tuple[str, ...] = ()  # kinds aligned with history ("" for none); () when no event has one


@dataclass(frozen=True)
class ItemFeatures:
    item_id: str
    found: bool
    features: dict[str, Any]
    updated_at: int


@dataclass(frozen=True)
class FeatureContract:
    """The feature schema the feature service serves (canonical JSON, see recsys/schema.py)."""

    schema_json: str
    schema_hash: str


@dataclass(frozen=True)
class RolloutStatus:
    """A running or finished rollout; `raw` is the whole message (counters, limits)."""

    version: int
    model_version: str
    mode: str  # "canary" or "shadow"
    fraction: float
    state: str  # "running", "promoted" or "rolled_back"
    reason: str
    raw: admin_pb2.RolloutStatus = field(repr=False, compare=False)


@dataclass(frozen=True)
class ModelStatus:
    model: str
    policy: str  # "latest", "pinned" or "artifact"
    serving_version: int
    model_version: str
    versions: tuple[int, ...]
    rejected: dict[int, str]  # version -> the check it failed
    rollout: RolloutStatus | None
    raw: admin_pb2.GetModelStatusResponse = field(repr=False, compare=False)


@dataclass(frozen=True)
class ServingChange:
    """What serves after a load, rollback, promotion or abort."""

    serving_version: int
    model_version: str
    rollout: RolloutStatus | None
    raw: Any = field(repr=False, compare=False)


def source_name(source: int) -> str:
    return inference_pb2.Source.Name(source).removeprefix("SOURCE_").lower()


def _attributions(values) -> tuple[Attribution, ...]:
    return tuple(Attribution(a.name, a.contribution, a.title) for a in values)


def recommendation(response: inference_pb2.RecommendResponse) -> Recommendation:
    items = tuple(
        ScoredItem(i.item_id, i.score, i.title, _attributions(i.because_items), _attributions(i.because_features))
        for i in response.items
    )
    return Recommendation(items, response.model_version, source_name(response.source), response.degraded)


def scores(response: inference_pb2.ScoreResponse) -> Scores:
    return Scores(
        tuple(response.scores),
        tuple(response.unknown_item_ids),
        response.model_version,
        source_name(response.source),
        response.degraded,
    )


def interactions(events: Iterable[Interaction | Mapping[str, Any] | tuple]) -> list[types_pb2.Interaction]:
    """Events as `Interaction`s, dicts with its field names, or (user_id, item_id, timestamp[, event_id[, event]])."""
    out = []
    for event in events:
        if isinstance(event, Mapping):
            event = Interaction(**event)
        elif not isinstance(event, Interaction):
            event = Interaction(*event)
        out.append(
            types_pb2.Interaction(
                user_id=event.user_id,
                item_id=event.item_id,
                timestamp=int(event.timestamp),
                event_id=event.event_id,
                event=event.event,
            )
        )
    return out


def feature_rows(rows: Mapping[str, Mapping[str, Any]]) -> list[features_pb2.FeatureRow]:
    """{id: {feature: str | float | list[str]}} -> FeatureRow messages (None values left out)."""
    return [features_pb2.FeatureRow(id=key, features=to_proto_map(dict(values))) for key, values in rows.items()]


def user_features(response: features_pb2.GetUserFeaturesResponse) -> list[UserFeatures]:
    return [
        UserFeatures(
            u.user_id,
            u.found,
            tuple(u.history),
            tuple(u.history_timestamps),
            from_proto_map(u.features),
            u.updated_at,
            tuple(u.history_events),
        )
        for u in response.users
    ]


def item_features(response: features_pb2.GetItemFeaturesResponse) -> list[ItemFeatures]:
    return [ItemFeatures(i.item_id, i.found, from_proto_map(i.features), i.updated_at) for i in response.items]


def rollout_status(message: admin_pb2.RolloutStatus) -> RolloutStatus:
    return RolloutStatus(
        message.version, message.model_version, message.mode, message.fraction, message.state, message.reason, message
    )


def _maybe_rollout(response) -> RolloutStatus | None:
    return rollout_status(response.rollout) if response.HasField("rollout") else None


def model_status(response: admin_pb2.GetModelStatusResponse) -> ModelStatus:
    return ModelStatus(
        response.model,
        response.policy,
        response.serving_version,
        response.model_version,
        tuple(response.versions),
        {r.version: r.reason for r in response.rejected},
        _maybe_rollout(response),
        response,
    )


def serving_change(response) -> ServingChange:
    rollout = _maybe_rollout(response) if "rollout" in response.DESCRIPTOR.fields_by_name else None
    return ServingChange(response.serving_version, response.model_version, rollout, response)


_ERRORS: dict[grpc.StatusCode, type[errors.RecsysError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.Unauthenticated,
}


def error(exc: grpc.RpcError) -> errors.RecsysError:
    """The `recsys.errors` class for `exc`'s status, its details as message; `.code` is the
    status received (DEADLINE_EXCEEDED stays DEADLINE_EXCEEDED on an `Unavailable`)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    mapped = _ERRORS.get(code, errors.RecsysError)(details or code.name)
    mapped.code = code
    return mapped
