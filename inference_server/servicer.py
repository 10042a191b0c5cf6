"""gRPC adapter: InferenceService protos <-> Recommender calls."""

from __future__ import annotations

from recsys.v1 import inference_pb2, inference_pb2_grpc
from inference_server.pipeline import SOURCE_MODEL, Recommender

__all__ = ["InferenceServicer"]

_SOURCES = {SOURCE_MODEL: inference_pb2.SOURCE_MODEL}


def _source(name: str) -> int:
    return _SOURCES.get(name, inference_pb2.SOURCE_POPULARITY)


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, recommender: Recommender):
        self.recommender = recommender

    def Recommend(self, request, context):
        rec = self.recommender.recommend(request.user_id, request.k, request.exclude_seen)
        return inference_pb2.RecommendResponse(
            items=[
                inference_pb2.ScoredItem(item_id=i, score=s, title=t)
                for i, s, t in zip(rec.item_ids, rec.scores, rec.titles)
            ],
            model_version=self.recommender.model_version,
            source=_source(rec.source),
        )

    def Score(self, request, context):
        scores, source = self.recommender.score(request.user_id, list(request.item_ids))
        return inference_pb2.ScoreResponse(
            scores=scores, model_version=self.recommender.model_version, source=_source(source)
        )
