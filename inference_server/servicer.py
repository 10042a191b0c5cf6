"""gRPC adapters: InferenceService and AdminService protos <-> ModelManager calls.

Each call is answered by one version (`manager.recommend` / `manager.score` read the served
model once, and pick a rollout's candidate for the users it covers), so a hot swap never
splits a call between two versions, and the response names the version that produced it.
Deadlines: the feature fetch gets what is left of the call's deadline (or of the server's own per-request
timeout, whichever ends first) minus a reserve for the model, so a slow feature service turns
into a degraded answer before the caller gives up, not into DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import logging

import grpc

from inference_server.config import CANARY
from inference_server.model_repository import ModelManager
from inference_server.pipeline import (
    DEGRADED_SOURCES,
    SOURCE_FALLBACK,
    SOURCE_MODEL,
    SOURCE_REQUEST_HISTORY,
)
from recsys.logs import user_ref
from recsys.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc

__all__ = ["AdminServicer", "InferenceServicer", "fetch_timeout"]

log = logging.getLogger(__name__)

_SOURCES = {
    SOURCE_MODEL: inference_pb2.SOURCE_MODEL,
    SOURCE_REQUEST_HISTORY: inference_pb2.SOURCE_REQUEST_HISTORY,
    SOURCE_FALLBACK: inference_pb2.SOURCE_POPULARITY,
}
# Of a call's time budget, what the model and the answer keep back from the feature fetch:
# a quarter of the budget, at most this much.
MODEL_RESERVE_S = 0.25


def _source(name: str) -> int:
    return _SOURCES.get(name, inference_pb2.SOURCE_POPULARITY)


def _attributions(attributions) -> list:
    return [inference_pb2.Attribution(name=a.name, contribution=a.contribution, title=a.title) for a in attributions]


def fetch_timeout(remaining_s: float | None, request_timeout_s: float | None, feature_timeout_s: float) -> float:
    """Seconds the feature fetch may take: the call's budget (the earlier of the caller's
    deadline and the server's per-request timeout) less a reserve for the model (a quarter of
    the budget, at most `MODEL_RESERVE_S`), never more than `feature_timeout_s` and never below
    a millisecond."""
    budgets = [b for b in (remaining_s, request_timeout_s) if b is not None and b < 1e6]
    if not budgets:
        return feature_timeout_s
    budget = min(budgets)
    return max(0.001, min(feature_timeout_s, budget - min(MODEL_RESERVE_S, budget / 4)))


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """`on_degraded(rpc, source)` hears about every degraded answer (the server's metrics)."""

    def __init__(self, manager: ModelManager, *, request_timeout_s: float | None = None, on_degraded=None):
        self.manager = manager
        self.request_timeout_s = request_timeout_s
        self.on_degraded = on_degraded

    def _timeout(self, context: grpc.ServicerContext) -> float:
        return fetch_timeout(context.time_remaining(), self.request_timeout_s, self.manager.features.timeout_s)

    def _degraded(self, rpc: str, source: str, user_id: str) -> bool:
        if source not in DEGRADED_SOURCES:
            return False
        log.debug("%s for %s answered degraded (%s)", rpc, user_ref(user_id), source)
        if self.on_degraded is not None:
            self.on_degraded(rpc, source)
        return True

    def Recommend(self, request, context):
        rec, served = self.manager.recommend(
            request.user_id,
            request.k,
            request.exclude_seen,
            explain=request.explain,
            history=request.history,
            timeout_s=self._timeout(context),
        )
        response = inference_pb2.RecommendResponse(
            model_version=served.label,
            source=_source(rec.source),
            degraded=self._degraded("Recommend", rec.source, request.user_id),
        )
        # Items are built in place (no message copies); attributions only where asked for.
        add = response.items.add
        for i, s, t in zip(rec.item_ids, rec.scores, rec.titles):
            add(item_id=i, score=s, title=t)
        if rec.because_items or rec.because_features:
            items = response.items
            for item, because in zip(items, rec.because_items or ()):
                item.because_items.extend(_attributions(because))
            for item, because in zip(items, rec.because_features or ()):
                item.because_features.extend(_attributions(because))
        return response

    def Score(self, request, context):
        scores, source, unknown, served = self.manager.score(
            request.user_id, list(request.item_ids), timeout_s=self._timeout(context)
        )
        return inference_pb2.ScoreResponse(
            scores=scores,
            unknown_item_ids=unknown,
            model_version=served.label,
            source=_source(source),
            degraded=self._degraded("Score", source, request.user_id),
        )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Model status, load a version, roll back, rollouts (see protos/recsys/v1/admin.proto)."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        status = self.manager.status()
        return admin_pb2.GetModelStatusResponse(
            model=status["model"],
            policy=status["policy"],
            serving_version=status["serving_version"],
            model_version=status["label"],
            versions=status["versions"],
            rejected=[admin_pb2.RejectedVersion(version=v, reason=r) for v, r in sorted(status["rejected"].items())],
            rollout=_rollout(status["rollout"]),
        )

    def LoadModelVersion(self, request, context):
        served = self.manager.load_version(request.version or None)
        return admin_pb2.LoadModelVersionResponse(serving_version=served.version or 0, model_version=served.label)

    def RollbackModel(self, request, context):
        served = self.manager.rollback(request.version or None)
        return admin_pb2.RollbackModelResponse(serving_version=served.version or 0, model_version=served.label)

    def StartRollout(self, request, context):
        limits = {name: getattr(request.limits, name) for name in _LIMITS if request.limits.HasField(name)}
        rollout = self.manager.start_rollout(
            request.version or None,
            request.mode or CANARY,
            request.fraction or None,
            limits=limits,
            promote_after_s=request.promote_after_s or None,
        )
        return admin_pb2.StartRolloutResponse(rollout=_rollout(rollout.status()))

    def PromoteRollout(self, request, context):
        rollout = self.manager.rollout
        served = self.manager.promote_rollout()
        return admin_pb2.PromoteRolloutResponse(
            serving_version=served.version or 0, model_version=served.label, rollout=_rollout(rollout.status())
        )

    def AbortRollout(self, request, context):
        rollout = self.manager.abort_rollout(request.reason)
        served = self.manager.current
        return admin_pb2.AbortRolloutResponse(
            serving_version=served.version or 0, model_version=served.label, rollout=_rollout(rollout.status())
        )


_LIMITS = tuple(f.name for f in admin_pb2.RolloutLimits.DESCRIPTOR.fields)


def _rollout(status: dict | None) -> admin_pb2.RolloutStatus | None:
    if status is None:
        return None
    fields = {k: v for k, v in status.items() if k not in ("candidate", "stable", "limits")}
    return admin_pb2.RolloutStatus(
        candidate=admin_pb2.RolloutAnswers(**status["candidate"]),
        stable=admin_pb2.RolloutAnswers(**status["stable"]),
        limits=admin_pb2.RolloutLimits(**status["limits"]),
        **fields,
    )
