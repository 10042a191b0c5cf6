"""ANN retrieval files of a next-item artifact (see recsys/ann.py for the layout): the user
encoder graph, the item vectors and the index, with the index's recall measured at export.

Every next-item model scores `encode(item_seq)[:, -1] @ output_embeddings().T (+ output_bias())`,
so the user vector is the last hidden state (with a trailing 1 when there is a bias) and the
item vectors are the output embeddings (with the bias as a last column): user . item equals
the model's score, which export checks against ONNX Runtime.

Whether to build one: `mode` "auto" builds it from `ANN_MIN_ITEMS` items up (below that exact
scoring is fast and exact), "on" always, "off" never.

Recall is measured against exact scoring on user vectors of `windows` (real histories, when the
caller has them; users the benchmark does not use) and of random histories. With
`target_recall`, faiss-ivf's nprobe is the smallest of 1, 2, 4, ... reaching it on `windows`,
norm-pruned's cosine cap the smallest of 1, 0.9, ..., 0.5; the sweep goes into retrieval.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys.ann import (
    ANN_INDEX,
    BACKENDS,
    ITEM_VECTORS,
    RETRIEVAL,
    USER_ENCODER,
    AnnSpec,
    build_index,
    exact_top_k,
)
from recsys.schema import FIRST_TOKEN, PAD
from trainer.export.onnx import ExportError, export_onnx

__all__ = ["ANN_MIN_ITEMS", "ANN_MODES", "DEFAULT_BACKEND", "UserVector", "export_ann", "item_vectors", "wants_ann"]

ANN_MIN_ITEMS = 100_000
ANN_MODES = ("auto", "on", "off")
DEFAULT_BACKEND = "norm-pruned"  # chosen by measurement: see README "Serving speed and scale"
ENCODER_TOLERANCE = 1e-3  # |user . item - model score|, float32 over D terms


class UserVector(nn.Module):
    """item_seq (B, L) -> user vector (B, D) or (B, D + 1) with a trailing 1 for the bias."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.with_bias = model.output_bias() is not None

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        hidden = self.model.encode(item_seq)[:, -1, :]  # (B, D)
        if self.with_bias:
            hidden = torch.cat([hidden, torch.ones_like(hidden[:, :1])], dim=-1)
        return hidden


def item_vectors(model: nn.Module) -> np.ndarray:
    """(N, D) or (N, D + 1) float32, model column order."""
    with torch.no_grad():
        vectors = model.output_embeddings()
        bias = model.output_bias()
        if bias is not None:
            vectors = torch.cat([vectors, bias.unsqueeze(-1)], dim=-1)
        return np.ascontiguousarray(vectors.detach().cpu().numpy(), dtype=np.float32)


def wants_ann(mode: str, num_items: int) -> bool:
    if mode not in ANN_MODES:
        raise ValueError(f"ann must be one of {', '.join(ANN_MODES)}, got {mode!r}")
    return mode == "on" or (mode == "auto" and num_items >= ANN_MIN_ITEMS)


def export_ann(
    model: nn.Module,
    directory: Path,
    max_len: int,
    num_items: int,
    *,
    mode: str = "auto",
    backend: str = DEFAULT_BACKEND,
    params: dict | None = None,
    recall_queries: int = 200,
    seed: int = 0,
    windows: np.ndarray | None = None,
    target_recall: float | None = None,
) -> list[str]:
    """Writes the retrieval files into `directory` when `wants_ann`; returns their names.

    windows: (n, max_len) int64 left-padded token histories for the recall measurement (and the
    nprobe choice with `target_recall`, faiss-ivf only); recall is always also measured on
    `recall_queries` random histories.
    """

    if not wants_ann(mode, num_items):
        return []
    if backend not in BACKENDS:
        raise ValueError(f"unknown ANN backend {backend!r}; known: {', '.join(BACKENDS)}")
    model.eval()
    encoder = UserVector(model).eval()
    export_onnx(encoder, directory / USER_ENCODER, max_len, num_items, output_name="user_vector")
    vectors = item_vectors(model)
    np.save(directory / ITEM_VECTORS, vectors)
    queries, worst = _check_encoder(model, directory / USER_ENCODER, vectors, max_len, num_items, recall_queries, seed)
    if not worst <= ENCODER_TOLERANCE * max(1.0, float(np.abs(vectors).max())):
        raise ExportError(f"user encoder . item vectors differs from the model's scores by {worst:.2e}")
    start = time.perf_counter()
    index = build_index(vectors, backend, params)
    build_s = time.perf_counter() - start
    metrics = {"build_seconds": round(build_s, 1), "encoder_max_abs_diff": worst}
    if windows is not None and len(windows):
        users = _user_vectors(directory / USER_ENCODER, windows)
        if target_recall is not None and backend == "faiss-ivf":
            metrics["nprobe_sweep"] = tune_nprobe(index, vectors, users, 10, target_recall)
            metrics["target_recall"] = target_recall
        if target_recall is not None and backend == "norm-pruned":
            metrics["alpha_sweep"] = tune_alpha(index, vectors, users, 10, target_recall)
            metrics["target_recall"] = target_recall
        metrics["recall_at_10_user_histories"] = ann_recall(index, vectors, users, 10)
        metrics["user_histories"] = len(windows)
    metrics["recall_at_10_random_histories"] = ann_recall(index, vectors, queries, 10)
    index.save(directory / ANN_INDEX)
    spec = AnnSpec(backend=backend, dim=vectors.shape[1], num_items=num_items, params=index.params, metrics=metrics)
    (directory / RETRIEVAL).write_text(spec.to_json())
    return [USER_ENCODER, ITEM_VECTORS, ANN_INDEX, RETRIEVAL]


def _check_encoder(
    model, path: Path, vectors: np.ndarray, max_len: int, num_items: int, n: int, seed: int
) -> tuple[np.ndarray, float]:
    """User vectors (ORT) of `n` random histories, and max |user . item - model(torch)|."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(FIRST_TOKEN, num_items + FIRST_TOKEN, (n, max_len), generator=gen)
    lengths = torch.randint(1, max_len + 1, (n,), generator=gen)
    x[torch.arange(max_len).unsqueeze(0) < (max_len - lengths).unsqueeze(1)] = PAD
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    queries = session.run(["user_vector"], {"item_seq": x.numpy()})[0]
    worst = 0.0
    with torch.no_grad():
        for start in range(0, n, 16):
            expected = model(x[start : start + 16]).numpy()
            got = queries[start : start + 16] @ vectors.T
            worst = max(worst, float(np.abs(got - expected).max()))
    return queries, worst


def _user_vectors(path: Path, windows: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [
            session.run(["user_vector"], {"item_seq": np.ascontiguousarray(windows[i : i + 64])})[0]
            for i in range(0, len(windows), 64)
        ]
    )


def ann_recall(index, vectors: np.ndarray, queries: np.ndarray, k: int, exact: np.ndarray | None = None) -> float:
    """Mean |ANN top-k ∩ exact top-k| / k (`exact`: the exact top-k columns, when known)."""
    approx, _ = index.search(queries, k)
    if exact is None:
        exact = np.concatenate([exact_top_k(vectors, queries[i : i + 64], k)[0] for i in range(0, len(queries), 64)])
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact))
    return round(hits / (k * len(queries)), 4)


def tune_nprobe(index, vectors: np.ndarray, queries: np.ndarray, k: int, target: float) -> dict[str, float]:
    """Sets the IVF index's nprobe to the smallest power of two whose recall@k on `queries`
    reaches `target` (nlist when none does); returns {nprobe: recall} of the sweep."""
    exact = np.concatenate([exact_top_k(vectors, queries[i : i + 64], k)[0] for i in range(0, len(queries), 64)])
    nlist, sweep, nprobe = int(index.params["nlist"]), {}, 1
    while True:
        index.set_search(nprobe=nprobe)
        sweep[str(nprobe)] = ann_recall(index, vectors, queries, k, exact)
        if sweep[str(nprobe)] >= target or nprobe >= nlist:
            return sweep
        nprobe = min(2 * nprobe, nlist)


ALPHAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def tune_alpha(index, vectors: np.ndarray, queries: np.ndarray, k: int, target: float) -> dict[str, float]:
    """Sets the norm-pruned index's cosine cap to the smallest of ALPHAS (the fastest) whose
    recall@k on `queries` reaches `target` (1.0, exact, when none below does); returns
    {alpha: recall} of the sweep, which stops at the first alpha that misses the target."""
    exact = np.concatenate([exact_top_k(vectors, queries[i : i + 64], k)[0] for i in range(0, len(queries), 64)])
    sweep, chosen = {}, 1.0
    for alpha in ALPHAS:
        index.set_search(alpha=alpha)
        sweep[str(alpha)] = ann_recall(index, vectors, queries, k, exact)
        if sweep[str(alpha)] < target:
            break
        chosen = alpha
    index.set_search(alpha=chosen)
    return sweep
