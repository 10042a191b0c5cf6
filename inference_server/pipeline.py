"""Recommend and Score as plain functions of (user id, arguments) -> results.

The pipeline is model-agnostic: it reads from the manifest which input the model takes and
where it comes from, fetches the user's features once per request, runs the model and ranks.
Servicers adapt protos to these calls; nothing here sees a gRPC context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.artifact import SOURCE_USER_HISTORY, ItemIndex, Manifest
from recsys.errors import FailedPrecondition, InvalidArgument
from recsys.schema import FIRST_TOKEN, OOV, PAD
from inference_server.feature_client import FeatureClient
from recsys.onnx_session import ModelSession

__all__ = ["MAX_ID_CHARS", "Recommendation", "Recommender"]

MAX_ID_CHARS = 256
SOURCE_MODEL = "model"
SOURCE_POPULARITY = "popularity"


@dataclass(frozen=True)
class Recommendation:
    item_ids: list[str]
    scores: list[float]
    titles: list[str]
    source: str  # SOURCE_MODEL or SOURCE_POPULARITY


class Recommender:
    def __init__(
        self,
        manifest: Manifest,
        index: ItemIndex,
        session: ModelSession,
        features: FeatureClient,
        *,
        max_k: int = 1000,
        max_candidates: int = 10000,
        seen_window: int = 1000,
    ):
        if [i.source for i in manifest.inputs] != [SOURCE_USER_HISTORY]:
            raise FailedPrecondition(
                f"model inputs {[i.source for i in manifest.inputs]} are not supported by this server"
            )
        if len(index.item_ids) != manifest.num_items or index.sha256 != manifest.item_index_sha256:
            raise FailedPrecondition("item_index.json does not match the manifest's item index checksum")
        self.manifest = manifest
        self.index = index
        self.session = session
        self.features = features
        self.max_k = max_k
        self.max_candidates = max_candidates
        # exclude_seen drops items among the user's `seen_window` most recent events.
        self.seen_window = max(seen_window, manifest.max_history)
        self.token = {item: i + FIRST_TOKEN for i, item in enumerate(index.item_ids)}
        # Popularity scores: the fallback for users with nothing the model can read.
        self.popularity = np.asarray(index.popularity, dtype=np.float32)

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    def recommend(self, user_id: str, k: int, exclude_seen: bool) -> Recommendation:
        _check_user_id(user_id)
        if not 1 <= k <= self.max_k:
            raise InvalidArgument(f"k must be between 1 and {self.max_k}, got {k}")
        scores, seen, source = self._scores(user_id)
        if exclude_seen and len(seen):
            scores[seen] = -np.inf
        available = int(np.isfinite(scores).sum())
        k = min(k, available)
        top = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        return Recommendation(
            item_ids=[self.index.item_ids[i] for i in top],
            scores=[float(scores[i]) for i in top],
            titles=[self.index.titles[i] for i in top],
            source=source,
        )

    def score(self, user_id: str, item_ids: list[str]) -> tuple[list[float], str]:
        _check_user_id(user_id)
        if not item_ids:
            raise InvalidArgument("item_ids is empty")
        if len(item_ids) > self.max_candidates:
            raise InvalidArgument(f"{len(item_ids)} item_ids exceeds the maximum of {self.max_candidates}")
        unknown = [i for i in item_ids if i not in self.token]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise InvalidArgument(f"unknown item_ids: {shown}{more}")
        scores, _, source = self._scores(user_id)
        columns = [self.token[i] - FIRST_TOKEN for i in item_ids]
        return [float(s) for s in scores[columns]], source

    def _scores(self, user_id: str) -> tuple[np.ndarray, np.ndarray, str]:
        """(num_items,) scores, columns of items the user has seen, and where the scores came from."""
        user = self.features.get_user(user_id, self.seen_window)
        tokens = np.array([self.token.get(i, OOV) for i in user.history], dtype=np.int64)
        seen = tokens[tokens >= FIRST_TOKEN] - FIRST_TOKEN
        if not user.found or not len(seen):
            return self.popularity.copy(), seen, SOURCE_POPULARITY
        window = np.full((1, self.manifest.max_history), PAD, dtype=np.int64)
        tail = tokens[-self.manifest.max_history :]
        window[0, -len(tail) :] = tail
        return self.session.scores(window)[0].astype(np.float32, copy=True), seen, SOURCE_MODEL


def _check_user_id(user_id: str) -> None:
    if not user_id:
        raise InvalidArgument("user_id is empty")
    if len(user_id) > MAX_ID_CHARS:
        raise InvalidArgument(f"user_id is longer than {MAX_ID_CHARS} characters")
