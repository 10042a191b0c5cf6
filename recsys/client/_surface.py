"""The methods both clients share: each builds its request, names its RPC and its result type,
and hands them to the client's `_invoke` (blocking in `RecsysClient`, a coroutine in
`AsyncRecsysClient`), so the two surfaces cannot drift apart."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from grpc_health.v1 import health_pb2

from recsys.client import _types as t
from recsys.security import ClientSecurity, ClientTls
from recsys.v1 import admin_pb2, features_pb2, inference_pb2

INFERENCE = "recsys.v1.InferenceService"
FEATURES = "recsys.v1.FeatureService"
ADMIN = "recsys.v1.AdminService"
HEALTH = "grpc.health.v1.Health"
# Reads: safe to send again when the server answered UNAVAILABLE (or never saw the call).
# Writes are never retried by the channel: a RecordInteractions retry could count events twice
# unless each carries an event_id, and the admin calls change what serves.
RETRIED = {INFERENCE: ("Recommend", "Score"), FEATURES: ("GetUserFeatures", "GetItemFeatures", "GetSchema")}
RETRIED |= {ADMIN: ("GetModelStatus",), HEALTH: ("Check",)}
MAX_ATTEMPTS = 5  # gRPC caps maxAttempts at 5


def channel_options(retries: int) -> list[tuple[str, Any]]:
    """Channel options: retries of the reads in `RETRIED` on UNAVAILABLE, with backoff."""
    if retries <= 0:
        return [("grpc.enable_retries", 0)]
    policy = {
        "maxAttempts": min(retries + 1, MAX_ATTEMPTS),
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    names = [{"service": s, "method": m} for s, methods in RETRIED.items() for m in methods]
    config = {"methodConfig": [{"name": names, "retryPolicy": policy}]}
    return [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]


class Surface:
    """Every RPC of the inference, feature and admin services, and health; ids in, dataclasses out.

    `inference` and `features` are HOST:PORT targets (`features` only for the feature-service
    methods). TLS is on when `tls_ca` (the CA of the servers' certificates) or `client_cert` and
    `client_key` (mutual TLS) are given; `token` goes as `authorization: Bearer` on every call.
    `timeout_s` is each call's deadline unless the call passes its own. Failed calls raise the
    `recsys.errors` class of their status (see `recsys.client.error`).
    """

    def __init__(
        self,
        inference: str,
        features: str | None = None,
        *,
        tls_ca: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        token: str | None = None,
        timeout_s: float = 5.0,
        retries: int = 3,
    ) -> None:
        tls = ClientTls(tls_ca, client_cert, client_key) if tls_ca or client_cert or client_key else None
        self.targets = {"inference": inference, "features": features}
        self.security = ClientSecurity(tls=tls, token=token)
        self.timeout_s = timeout_s
        self.options = channel_options(retries)

    def _target(self, where: str) -> str:
        target = self.targets[where]
        if target is None:
            raise ValueError(f"this client has no {where} target: pass {where}='HOST:PORT'")
        return target

    def _invoke(self, where: str, service: str, rpc: str, request, response_type, convert: Callable, timeout_s):
        raise NotImplementedError

    # Inference service
    def recommend(
        self,
        user_id: str,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        explain: bool = False,
        history: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> t.Recommendation:
        """Top-k for `user_id`, best first; `history` (oldest first) is used only when the
        inference server cannot reach the feature service."""
        request = inference_pb2.RecommendRequest(
            user_id=user_id, k=k, exclude_seen=exclude_seen, explain=explain, history=list(history)
        )
        return self._invoke(
            "inference", INFERENCE, "Recommend", request, inference_pb2.RecommendResponse, t.recommendation, timeout_s
        )

    def score(self, user_id: str, item_ids: Sequence[str], *, timeout_s: float | None = None) -> t.Scores:
        request = inference_pb2.ScoreRequest(user_id=user_id, item_ids=list(item_ids))
        return self._invoke("inference", INFERENCE, "Score", request, inference_pb2.ScoreResponse, t.scores, timeout_s)

    # Feature service
    def record_interactions(
        self, events: Iterable[t.Interaction | Mapping[str, Any] | tuple], *, timeout_s: float | None = None
    ) -> t.Recorded:
        """Appends events (`Interaction`s, dicts or (user_id, item_id, timestamp[, event_id[, event]]));
        durable once it returns. Not retried by the channel."""
        request = features_pb2.RecordInteractionsRequest(interactions=t.interactions(events))
        return self._invoke(
            "features",
            FEATURES,
            "RecordInteractions",
            request,
            features_pb2.RecordInteractionsResponse,
            lambda r: t.Recorded(r.recorded, r.duplicates),
            timeout_s,
        )

    def update_user_features(self, rows: Mapping[str, Mapping[str, Any]], *, timeout_s: float | None = None) -> int:
        """Replaces users' feature rows ({user_id: {name: str | float | list[str]}}); returns rows changed."""
        request = features_pb2.UpdateUserFeaturesRequest(rows=t.feature_rows(rows))
        response_type = features_pb2.UpdateUserFeaturesResponse
        return self._invoke(
            "features", FEATURES, "UpdateUserFeatures", request, response_type, lambda r: r.updated, timeout_s
        )

    def update_item_features(self, rows: Mapping[str, Mapping[str, Any]], *, timeout_s: float | None = None) -> int:
        """Replaces items' feature rows ({item_id: {name: value}}); returns rows changed."""
        request = features_pb2.UpdateItemFeaturesRequest(rows=t.feature_rows(rows))
        response_type = features_pb2.UpdateItemFeaturesResponse
        return self._invoke(
            "features", FEATURES, "UpdateItemFeatures", request, response_type, lambda r: r.updated, timeout_s
        )

    def get_user_features(
        self, user_ids: Sequence[str], max_history: int = 0, *, timeout_s: float | None = None
    ) -> list[t.UserFeatures]:
        """One entry per id, in order; `max_history` 0: the service's maximum."""
        request = features_pb2.GetUserFeaturesRequest(user_ids=list(user_ids), max_history=max_history)
        response_type = features_pb2.GetUserFeaturesResponse
        return self._invoke("features", FEATURES, "GetUserFeatures", request, response_type, t.user_features, timeout_s)

    def get_item_features(self, item_ids: Sequence[str], *, timeout_s: float | None = None) -> list[t.ItemFeatures]:
        request = features_pb2.GetItemFeaturesRequest(item_ids=list(item_ids))
        response_type = features_pb2.GetItemFeaturesResponse
        return self._invoke("features", FEATURES, "GetItemFeatures", request, response_type, t.item_features, timeout_s)

    def forget_user(self, user_id: str, *, timeout_s: float | None = None) -> bool:
        """Deletes all held about `user_id` (a tombstone stays); True if anything was held."""
        request = features_pb2.ForgetUserRequest(user_id=user_id)
        response_type = features_pb2.ForgetUserResponse
        return self._invoke("features", FEATURES, "ForgetUser", request, response_type, lambda r: r.found, timeout_s)

    def feature_contract(self, *, timeout_s: float | None = None) -> t.FeatureContract:
        response_type = features_pb2.GetSchemaResponse
        convert = lambda r: t.FeatureContract(r.schema_json, r.schema_hash)  # noqa: E731
        return self._invoke(
            "features", FEATURES, "GetSchema", features_pb2.GetSchemaRequest(), response_type, convert, timeout_s
        )

    # Admin service (on the inference server)
    def model_status(self, *, timeout_s: float | None = None) -> t.ModelStatus:
        request, response_type = admin_pb2.GetModelStatusRequest(), admin_pb2.GetModelStatusResponse
        return self._invoke("inference", ADMIN, "GetModelStatus", request, response_type, t.model_status, timeout_s)

    def load_model_version(self, version: int, *, timeout_s: float | None = None) -> t.ServingChange:
        """Checks `version`, swaps to it and pins it (0: follow the newest again)."""
        request = admin_pb2.LoadModelVersionRequest(version=version)
        response_type = admin_pb2.LoadModelVersionResponse
        return self._invoke("inference", ADMIN, "LoadModelVersion", request, response_type, t.serving_change, timeout_s)

    def rollback_model(self, version: int | None = None, *, timeout_s: float | None = None) -> t.ServingChange:
        """Serves the version served before the current one, or `version`."""
        request = admin_pb2.RollbackModelRequest(version=version or 0)
        response_type = admin_pb2.RollbackModelResponse
        return self._invoke("inference", ADMIN, "RollbackModel", request, response_type, t.serving_change, timeout_s)

    def start_rollout(
        self,
        version: int,
        mode: str = "canary",
        fraction: float = 0.05,
        promote_after_s: float = 0,
        *,
        limits: Mapping[str, float] | None = None,
        timeout_s: float | None = None,
    ) -> t.RolloutStatus:
        """Rolls `version` out beside the served one ("canary" answers `fraction` of users,
        "shadow" only compares; fraction 0: the server's default for the mode). `limits`:
        RolloutLimits fields (max_error_rate, max_p99_ms, min_overlap, min_requests, ...)."""
        request = admin_pb2.StartRolloutRequest(
            version=version,
            mode=mode,
            fraction=fraction,
            limits=admin_pb2.RolloutLimits(**{k: v for k, v in (limits or {}).items() if v is not None}),
            promote_after_s=promote_after_s,
        )
        convert = lambda r: t.rollout_status(r.rollout)  # noqa: E731
        response_type = admin_pb2.StartRolloutResponse
        return self._invoke("inference", ADMIN, "StartRollout", request, response_type, convert, timeout_s)

    def promote_rollout(self, *, timeout_s: float | None = None) -> t.ServingChange:
        request, response_type = admin_pb2.PromoteRolloutRequest(), admin_pb2.PromoteRolloutResponse
        return self._invoke("inference", ADMIN, "PromoteRollout", request, response_type, t.serving_change, timeout_s)

    def abort_rollout(self, reason: str = "", *, timeout_s: float | None = None) -> t.ServingChange:
        request = admin_pb2.AbortRolloutRequest(reason=reason)
        response_type = admin_pb2.AbortRolloutResponse
        return self._invoke("inference", ADMIN, "AbortRollout", request, response_type, t.serving_change, timeout_s)

    # Health (both servers)
    def health(self, service: str = "", *, on: str = "inference", timeout_s: float | None = None) -> str:
        """The standard health status of `service` ("" = the server) on the `on` server
        ("inference" or "features"): "SERVING", "NOT_SERVING", ..."""
        request = health_pb2.HealthCheckRequest(service=service)
        convert = lambda r: health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)  # noqa: E731
        return self._invoke(on, HEALTH, "Check", request, health_pb2.HealthCheckResponse, convert, timeout_s)
