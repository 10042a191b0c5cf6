"""Picks the ANN backend by measurement: build time, search latency at batch 1 and recall@10
against exact scoring, for each backend in recsys/ann.py, on an artifact's item vectors and
user vectors of its own users' histories (the real query distribution).

    python -m benchmarks.bench_ann --artifact runs/synth1m/sasrec [--backends norm-pruned,faiss-ivf,faiss-hnsw]
        [--alpha 1.0,0.9,0.8] [--nlist 1024,4096] [--nprobe 8,16,32,64,128,256] [--items 200000] [--out .bench/ann.json]

`--items N` keeps the first N item vectors (a quicker comparison on a loaded machine). For
faiss-ivf, each `--nlist` is built once and searched at every `--nprobe`, norm-pruned at every
`--alpha` (the recall/latency trade-off); the other backends use their default parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from itertools import islice
from pathlib import Path

import numpy as np

from recsys.ann import ITEM_VECTORS, build_index, exact_top_k, read_spec
from recsys.artifact import HISTORIES, ItemIndex, read_jsonl, read_manifest
from recsys.onnx_session import ModelSession
from recsys.schema import FIRST_TOKEN, PAD


def user_vectors(artifact: str, users: int) -> np.ndarray:
    manifest = read_manifest(artifact)
    spec = read_spec(artifact)
    encoder = ModelSession(artifact, manifest, model_file=spec.encoder, output=spec.encoder_output)
    token = {item: i + FIRST_TOKEN for i, item in enumerate(ItemIndex.read(artifact).item_ids)}
    windows = []
    for row in islice(read_jsonl(Path(artifact) / HISTORIES), users):
        tail = [token[i] for i in row["item_ids"] if i in token][-manifest.max_history :]
        window = np.full(manifest.max_history, PAD, dtype=np.int64)
        if tail:
            window[-len(tail) :] = tail
        windows.append(window)
    return np.concatenate([encoder.scores(np.stack(windows[i : i + 64])) for i in range(0, len(windows), 64)])


def measure(index, queries: np.ndarray, exact: np.ndarray, k: int) -> dict:
    """Batch-1 search latency (ms) and recall@k against `exact` over `queries`."""
    samples, hits = [], 0
    for q, truth in zip(queries, exact):
        t = time.perf_counter()
        cols, _ = index.search(q[None, :], k)
        samples.append((time.perf_counter() - t) * 1000)
        hits += len(set(cols[0].tolist()) & set(truth.tolist()))
    p50, p99 = np.percentile(samples, [50, 99])
    return {
        "search_p50_ms": round(float(p50), 3),
        "search_p99_ms": round(float(p99), 3),
        f"recall_at_{k}": round(hits / (k * len(queries)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--items", type=int, default=0, help="first N item vectors only (0 = all)")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--backends", default="norm-pruned,faiss-ivf")
    parser.add_argument("--alpha", default="1.0,0.9,0.8,0.7,0.6", help="norm-pruned: cosine caps")
    parser.add_argument("--nlist", default="1024,4096", help="faiss-ivf: list counts to build")
    parser.add_argument("--nprobe", default="8,16,32,64,128,256", help="faiss-ivf: lists scanned per query")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)  # the server searches on one thread per request
    vectors = np.load(Path(args.artifact) / ITEM_VECTORS, mmap_mode="r")
    vectors = np.ascontiguousarray(vectors[: args.items] if args.items else vectors)
    queries = user_vectors(args.artifact, args.users)
    exact = np.concatenate([exact_top_k(vectors, queries[i : i + 32], args.k)[0] for i in range(0, len(queries), 32)])
    results = {
        "items": len(vectors),
        "dim": vectors.shape[1],
        "queries": len(queries),
        "load_average": os.getloadavg(),
        "runs": [],
    }
    for backend in args.backends.split(","):
        settings = [{"nlist": int(n)} for n in args.nlist.split(",")] if backend == "faiss-ivf" else [{}]
        for params in settings:
            start = time.perf_counter()
            index = build_index(vectors, backend, params, threads=os.cpu_count() or 1)
            build_s = round(time.perf_counter() - start, 1)
            faiss.omp_set_num_threads(1)
            searches = (
                [{"nprobe": int(p)} for p in args.nprobe.split(",")]
                if backend == "faiss-ivf"
                else [{"alpha": float(a)} for a in args.alpha.split(",")]
                if backend == "norm-pruned"
                else [{}]
            )
            for search in searches:
                if int(search.get("nprobe", 1)) > int(index.params.get("nlist", 1 << 30)):
                    continue
                index.set_search(**search)
                row = {
                    "backend": backend,
                    "params": dict(index.params),
                    "build_s": build_s,
                    **measure(index, queries, exact, args.k),
                }
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    t = time.perf_counter()
    for q in queries[:50]:
        exact_top_k(vectors, q[None, :], args.k)
    results["exact_ms_per_query"] = round((time.perf_counter() - t) * 1000 / 50, 3)
    print("exact", results["exact_ms_per_query"], "ms per query")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
