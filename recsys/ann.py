"""Approximate nearest-neighbour (maximum inner product) indexes over item vectors, shared by
the exporter (builds them) and the inference server (loads and searches them). Torch-free.

An artifact with ANN retrieval holds, beside model.onnx:

    retrieval.json      AnnSpec below: backend, parameters, files, recall measured at export
    user_encoder.onnx   item_seq (B, L) -> user_vector (B, D): the model minus its scoring
    item_vectors.npy    (N, D) float32 item vectors, model column order; with a bias the last
                        column holds it and user vectors end in 1, so user . item == the score
    ann.index           the index file of `backend`

The model scores are inner products user . item, which graph indexes search poorly when the
item norms differ. The HNSW backends therefore search the standard Euclidean reduction of
maximum inner product search (Bachrach et al., 2014): items get one more coordinate
sqrt(R^2 - |x|^2), R the largest norm, queries a 0 there; the nearest item in L2 is then the one
with the largest inner product. IVF searches inner products directly: items are grouped into
`nlist` lists by spherical k-means (faiss's default for METRIC_INNER_PRODUCT: assignment by
direction, whatever the norm), a query scans the `nprobe` lists whose centroids have the largest
inner product with it, and the candidates' scores are exact inner products (IndexIVFFlat keeps
the full vectors). Build time is k-means plus one assignment pass: minutes at 1M items on 2
cores, where HNSW took most of an hour. `nprobe` is the recall/latency knob; the exporter can
pick it by measured recall (trainer/export/ann.py).

"norm-pruned" (numpy only) scans the items in order of decreasing norm, a block at a time, and
stops once no remaining item can enter the top n: by Cauchy-Schwarz an item x scores at most
|q| |x|, and with the cosine cap `alpha` at most alpha |q| |x|. alpha = 1 is exact (recall 1 by
construction); alpha < 1 assumes no item outside the answer lies within arccos(alpha) of the
query direction, which the exporter checks by measuring recall and picks alpha by it.
`max_scan` > 0 bounds the rows scored per query (a latency bound; approximate when it binds). Learned
item tables are strongly norm-skewed (rarely seen items stay near their small initialisation),
so the scan touches a small fraction of the catalogue; excluded items are masked inside the
scan rather than asked for as extra neighbours. Build time: one sort.

Backends (extras `ann`: faiss-cpu, usearch): "norm-pruned" (the default), "faiss-ivf",
"faiss-hnsw", "usearch".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import FailedPrecondition

__all__ = [
    "ANN_INDEX",
    "BACKENDS",
    "ITEM_VECTORS",
    "RETRIEVAL",
    "USER_ENCODER",
    "AnnIndex",
    "AnnSpec",
    "build_index",
    "exact_top_k",
    "load_index",
    "read_spec",
]

RETRIEVAL = "retrieval.json"
USER_ENCODER = "user_encoder.onnx"
ITEM_VECTORS = "item_vectors.npy"
ANN_INDEX = "ann.index"
BACKENDS = ("norm-pruned", "faiss-hnsw", "faiss-ivf", "usearch")
DEFAULT_PARAMS = {
    "faiss-hnsw": {"M": 32, "ef_construction": 80, "ef_search": 128},
    # nlist ~ 4 sqrt(N) at 1M items; k-means on 64 points per list
    "faiss-ivf": {"nlist": 4096, "nprobe": 64, "train_per_list": 64},
    # cosine cap (1 = exact), rows scored per step, most rows scored per query (0 = no limit)
    "norm-pruned": {"alpha": 1.0, "block": 4096, "max_scan": 0},
    "usearch": {"M": 32, "ef_construction": 80, "ef_search": 128},
}


@dataclass(frozen=True)
class AnnSpec:
    backend: str
    dim: int  # of item_vectors.npy (model width, +1 with a bias)
    num_items: int
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # recall@10 vs exact, build seconds
    encoder: str = USER_ENCODER
    encoder_output: str = "user_vector"
    vectors: str = ITEM_VECTORS
    index: str = ANN_INDEX

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def read_spec(artifact_dir: str | Path) -> AnnSpec | None:
    """The artifact's AnnSpec, or None when it has no ANN index."""
    path = Path(artifact_dir) / RETRIEVAL
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    if d.get("backend") not in BACKENDS:
        raise FailedPrecondition(f"{path}: unknown ANN backend {d.get('backend')!r}; known: {', '.join(BACKENDS)}")
    return AnnSpec(**d)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum inner product: queries (B, D) -> columns (B, n), scores (B, n), best first."""
    scores = queries @ vectors.T  # (B, N)
    n = min(n, scores.shape[1])
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    part = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


class AnnIndex:
    """search(queries (B, D) float32, n) -> (columns (B, n) int64, inner products (B, n)),
    best first; columns are -1 where fewer than n were found."""

    def __init__(self, backend: str, index, vectors: np.ndarray, params: dict[str, Any]):
        self.backend = backend
        self.index = index
        self.vectors = vectors
        self.params = params

    @property
    def filters(self) -> bool:
        """Whether search() takes `exclude` itself (else ask for n + len(exclude) and filter)."""
        return self.backend == "norm-pruned"

    def set_search(self, **params) -> None:
        """Changes search-time parameters (faiss-ivf: nprobe; HNSW: ef_search) in place."""
        self.params = {**self.params, **params}
        if self.backend == "faiss-ivf":
            self.index.nprobe = int(self.params["nprobe"])
        elif self.backend == "usearch":
            self.index.expansion_search = int(self.params["ef_search"])

    def search(self, queries: np.ndarray, n: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`exclude` (columns never returned) only where `filters`."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.backend == "norm-pruned":
            return self.index.search(
                queries, n, float(self.params["alpha"]), exclude, int(self.params.get("max_scan", 0))
            )
        if exclude is not None:
            raise ValueError(f"{self.backend} does not filter: ask for n + len(exclude) and drop them")
        if self.backend == "faiss-ivf":
            scores, cols = self.index.search(queries, n)  # exact inner products, best first
            cols = cols.astype(np.int64)
            return cols, np.where(cols >= 0, scores, -np.inf).astype(np.float32)
        q = np.hstack([queries, np.zeros((len(queries), 1), np.float32)])  # the reduction's 0
        if self.backend == "faiss-hnsw":
            self.index.hnsw.efSearch = max(int(self.params["ef_search"]), n)
            _, cols = self.index.search(q, n)
        else:
            matches = self.index.search(q, n, exact=False)
            keys = np.asarray(matches.keys, dtype=np.int64).reshape(len(q), -1)
            # one query gives a Matches (found keys only), several a BatchMatches with counts
            counts = np.asarray(matches.counts if hasattr(matches, "counts") else [keys.shape[1]]).reshape(-1)
            cols = np.full((len(q), n), -1, dtype=np.int64)
            for row, count in enumerate(counts):
                cols[row, :count] = keys[row, :count]
        cols = cols.astype(np.int64)
        # Re-score exactly (n dot products): the reduction's distances are not the scores.
        safe = np.where(cols >= 0, cols, 0)
        scores = np.einsum("bd,bnd->bn", queries, self.vectors[safe])
        scores = np.where(cols >= 0, scores, -np.inf).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(cols, order, axis=1), np.take_along_axis(scores, order, axis=1)

    def save(self, path: str | Path) -> None:
        if self.backend == "norm-pruned":
            with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a name
                np.save(f, self.index.order)
        elif self.backend.startswith("faiss"):
            import faiss

            faiss.write_index(self.index, str(path))
        else:
            self.index.save(str(path))


class NormPruned:
    """Items sorted by decreasing norm; see the module docstring."""

    def __init__(self, vectors: np.ndarray, order: np.ndarray, block: int):
        if order.shape != (len(vectors),):
            raise FailedPrecondition(f"norm-pruned order has shape {order.shape}, expected ({len(vectors)},)")
        self.order = order.astype(np.int64)  # sorted position -> column
        self.position = np.empty_like(self.order)
        self.position[self.order] = np.arange(len(order))  # column -> sorted position
        self.sorted = np.ascontiguousarray(vectors[self.order])  # (N, D)
        self.norms = np.linalg.norm(self.sorted, axis=1)  # (N,) non-increasing
        self.block = block

    def search(self, queries: np.ndarray, n: int, alpha: float, exclude: np.ndarray | None, max_scan: int = 0):
        cols = np.full((len(queries), n), -1, dtype=np.int64)
        scores = np.full((len(queries), n), -np.inf, dtype=np.float32)
        skip = np.sort(self.position[exclude]) if exclude is not None and len(exclude) else np.zeros(0, np.int64)
        for row, q in enumerate(queries):
            bound = alpha * float(np.linalg.norm(q))
            best_s, best_p = np.empty(0, np.float32), np.empty(0, np.int64)
            for a in range(0, len(self.sorted), self.block):
                if len(best_s) >= n and bound * self.norms[a] <= best_s[-1]:
                    break  # no item from here on can beat the n-th best
                if max_scan and a >= max_scan and len(best_s) >= n:
                    break  # latency bound: the rest is left unscored (approximate)
                s = self.sorted[a : a + self.block] @ q  # (b,)
                lo, hi = np.searchsorted(skip, [a, a + len(s)])
                s[skip[lo:hi] - a] = -np.inf
                # Only rows that beat the current n-th best can enter: usually a handful.
                new = np.flatnonzero(s > (best_s[-1] if len(best_s) >= n else -np.inf))
                if not len(new):
                    continue
                s_all = np.concatenate([best_s, s[new]])
                p_all = np.concatenate([best_p, a + new])
                keep = np.argpartition(-s_all, n - 1)[:n] if len(s_all) > n else np.arange(len(s_all))
                keep = keep[np.argsort(-s_all[keep], kind="stable")]  # best first: best_s[-1] is the n-th
                best_s, best_p = s_all[keep], p_all[keep]
            cols[row, : len(best_p)] = self.order[best_p]
            scores[row, : len(best_s)] = best_s
        return cols, scores


def _augment(vectors: np.ndarray) -> np.ndarray:
    norms = np.einsum("nd,nd->n", vectors, vectors)
    extra = np.sqrt(np.maximum(norms.max() - norms, 0.0))[:, None]
    return np.ascontiguousarray(np.hstack([vectors, extra]), dtype=np.float32)


def build_index(
    vectors: np.ndarray, backend: str, params: dict[str, Any] | None = None, *, threads: int = 0
) -> AnnIndex:
    """Builds `backend`'s index over vectors (N, D) float32 (params default to DEFAULT_PARAMS)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown ANN backend {backend!r}; known: {', '.join(BACKENDS)}")
    params = {**DEFAULT_PARAMS[backend], **(params or {})}
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if backend == "norm-pruned":
        order = np.argsort(-np.linalg.norm(vectors, axis=1), kind="stable")
        index = NormPruned(vectors, order, int(params["block"]))
    elif backend.startswith("faiss"):
        import faiss

        if threads:
            faiss.omp_set_num_threads(threads)
        if backend == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(d + 1, int(params["M"]))
            index.hnsw.efConstruction = int(params["ef_construction"])
            index.add(_augment(vectors))
        else:
            nlist = max(1, min(int(params["nlist"]), n // 39))  # faiss wants >= 39 points per list
            params["nlist"] = nlist
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            sample = vectors[np.sort(rng.choice(n, min(n, nlist * int(params["train_per_list"])), replace=False))]
            index.train(sample)
            index.add(vectors)
            index.nprobe = int(params["nprobe"])
    else:
        from usearch.index import Index

        index = Index(
            ndim=d + 1,
            metric="l2sq",
            dtype="f32",
            connectivity=int(params["M"]),
            expansion_add=int(params["ef_construction"]),
            expansion_search=int(params["ef_search"]),
        )
        index.add(np.arange(n, dtype=np.uint64), _augment(vectors), threads=threads)
    return AnnIndex(backend, index, vectors, params)


def load_index(artifact_dir: str | Path, spec: AnnSpec, *, threads: int = 1) -> AnnIndex:
    """Loads the artifact's index and item vectors; `threads` bounds faiss's OpenMP pool."""
    directory = Path(artifact_dir)
    vectors = np.load(directory / spec.vectors)
    if vectors.shape != (spec.num_items, spec.dim):
        raise FailedPrecondition(
            f"{spec.vectors} has shape {vectors.shape}, retrieval.json says ({spec.num_items}, {spec.dim})"
        )
    path = str(directory / spec.index)
    if spec.backend == "norm-pruned":
        return AnnIndex(
            spec.backend, NormPruned(vectors, np.load(path), int(spec.params["block"])), vectors, spec.params
        )
    try:
        if spec.backend.startswith("faiss"):
            import faiss

            faiss.omp_set_num_threads(threads)
            index = faiss.read_index(path)
            if spec.backend == "faiss-ivf":
                index.nprobe = int(spec.params["nprobe"])
        else:
            from usearch.index import Index

            index = Index.restore(path)
            index.expansion_search = int(spec.params["ef_search"])
    except ImportError as exc:
        raise FailedPrecondition(
            f"the artifact's ANN index needs {spec.backend} (pip install 'recsys[ann]'): {exc}"
        ) from None
    return AnnIndex(spec.backend, index, vectors, spec.params)
