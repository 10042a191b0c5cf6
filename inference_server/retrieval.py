"""Top-k for next-item models over large catalogues: user vector from ONNX Runtime, items from
an approximate nearest-neighbour index (recsys.ann), both built at export.

Scoring every item costs O(N x D) per request, ~12 ms at N = 1M on one core; the index
answers in well under a millisecond. Small catalogues keep exact scoring: the exporter builds
an index only above a catalogue size (or when asked), and the server uses it when the artifact
has one unless told otherwise (`use_ann`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.ann import AnnSpec, exact_top_k, load_index, read_spec
from recsys.errors import FailedPrecondition
from recsys.onnx_session import ModelSession, SessionTuning

__all__ = ["ANN_MODES", "Retriever", "has_ann", "use_ann"]

ANN_MODES = ("auto", "on", "off")


def has_ann(artifact_dir: str | Path) -> bool:
    return read_spec(artifact_dir) is not None


def use_ann(artifact_dir: str | Path, mode: str) -> bool:
    """auto: the index when the artifact has one; on: required; off: exact scoring."""
    if mode not in ANN_MODES:
        raise FailedPrecondition(f"ANN mode must be one of {', '.join(ANN_MODES)}, got {mode!r}")
    if mode == "off":
        return False
    if mode == "on" and not has_ann(artifact_dir):
        raise FailedPrecondition(f"--ann on, but artifact {artifact_dir} has no ANN index (export it with one)")
    return has_ann(artifact_dir)


class Retriever:
    """`top_k(window (1, L), k, exclude) -> (columns, scores)` of one user, best first.

    `encoder` is a ModelSession over user_encoder.onnx (its `scores` returns (B, D) user
    vectors); the server may wrap it in a BatchingSession. Excluded columns (seen items) are
    skipped inside the search where the index can (norm-pruned), else filtered after a search
    for k + len(exclude) neighbours.
    """

    def __init__(
        self,
        artifact_dir: str | Path,
        manifest,
        *,
        device: str = "cpu",
        threads: int = 1,
        tuning: SessionTuning | None = None,
    ):
        spec: AnnSpec | None = read_spec(artifact_dir)
        if spec is None:
            raise FailedPrecondition(f"artifact {artifact_dir} has no ANN index")
        if spec.num_items != manifest.num_items:
            raise FailedPrecondition(f"ANN index covers {spec.num_items} items, the model {manifest.num_items}")
        self.spec = spec
        self.encoder = ModelSession(
            artifact_dir,
            manifest,
            device=device,
            threads=threads,
            tuning=tuning,
            model_file=spec.encoder,
            output=spec.encoder_output,
        )
        self.index = load_index(artifact_dir, spec, threads=1)
        self.num_items = manifest.num_items

    def describe(self) -> dict:
        return {"backend": self.spec.backend, "params": self.spec.params, "export_metrics": self.spec.metrics}

    def warm_up(self) -> None:
        vector = self.encoder.scores(np.zeros((1, self.encoder.max_len), dtype=np.int64))
        if vector.shape != (1, self.spec.dim):
            raise FailedPrecondition(f"user encoder output shape {vector.shape} != (1, {self.spec.dim})")
        self.index.search(vector, 10)

    def top_k(self, window: np.ndarray, k: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        vector = self.encoder.scores(window)
        if self.index.filters:  # the index skips excluded items itself: no extra neighbours needed
            cols, scores = self.index.search(vector, min(self.num_items, k), exclude)
            return _keep(cols[0], scores[0], None, k)
        n = min(self.num_items, k + (len(exclude) if exclude is not None else 0))
        cols, scores = self.index.search(vector, n)
        return _keep(cols[0], scores[0], exclude, k)

    def exact_top_k(self, window: np.ndarray, k: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The same answer by scoring every item (what recall is measured against)."""
        vector = self.encoder.scores(window)
        n = min(self.num_items, k + (len(exclude) if exclude is not None else 0))
        cols, scores = exact_top_k(self.index.vectors, vector, n)
        return _keep(cols[0], scores[0], exclude, k)

    def score_items(self, window: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Exact scores of the given item columns, (len(cols),) float32."""
        vector = self.encoder.scores(window)[0]
        return (self.index.vectors[cols] @ vector).astype(np.float32)


def _keep(cols: np.ndarray, scores: np.ndarray, exclude: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    ok = cols >= 0
    if exclude is not None and len(exclude):
        ok &= ~np.isin(cols, exclude)
    return cols[ok][:k], scores[ok][:k]
