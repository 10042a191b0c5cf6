"""Python clients of the recsys services: `RecsysClient` (blocking) and `AsyncRecsysClient`
(`grpc.aio`), with the same methods over every RPC of the inference, feature and admin
services and health; plain ids and values in, frozen dataclasses out (docs/clients.md).

Each client keeps one channel per target. Reads (Recommend, Score, GetUserFeatures,
GetItemFeatures, GetSchema, GetModelStatus, health) are retried by the channel on UNAVAILABLE
(`retries` extra attempts, at most 4, with backoff, through gRPC's service config); writes and
admin changes are never sent twice. A failed call raises the `recsys.errors` class of its
status (`error`), whose `code` is the status received.
"""

from recsys.client._aio import AsyncRecsysClient
from recsys.client._helpers import (
    RecommendError,
    format_explanations,
    format_recommendations,
    free_port,
    recommend,
    wait_serving,
)
from recsys.client._surface import channel_options
from recsys.client._sync import RecsysClient
from recsys.client._types import (
    Attribution,
    FeatureContract,
    Interaction,
    ItemFeatures,
    ModelStatus,
    Recommendation,
    Recorded,
    RolloutStatus,
    ScoredItem,
    Scores,
    ServingChange,
    UserFeatures,
    error,
)

__all__ = [
    "AsyncRecsysClient",
    "Attribution",
    "FeatureContract",
    "Interaction",
    "ItemFeatures",
    "ModelStatus",
    "RecommendError",
    "Recommendation",
    "Recorded",
    "RecsysClient",
    "RolloutStatus",
    "ScoredItem",
    "Scores",
    "ServingChange",
    "UserFeatures",
    "channel_options",
    "error",
    "format_explanations",
    "format_recommendations",
    "free_port",
    "recommend",
    "wait_serving",
]
