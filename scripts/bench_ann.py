"""Picks the ANN backend by measurement: build time, search latency at batch 1 and recall@10
against exact scoring, for each backend in recsys/ann.py, on an artifact's item vectors and
user vectors of its own users' histories (the real query distribution).

    python scripts/bench_ann.py --artifact runs/synth1m/sasrec [--items 200000] [--out .bench/ann.json]

`--items N` keeps the first N item vectors (a quicker comparison on a loaded machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.ann import BACKENDS, ITEM_VECTORS, build_index, exact_top_k, read_spec
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--items", type=int, default=0, help="first N item vectors only (0 = all)")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args()
    vectors = np.load(Path(args.artifact) / ITEM_VECTORS, mmap_mode="r")
    vectors = np.ascontiguousarray(vectors[: args.items] if args.items else vectors)
    queries = user_vectors(args.artifact, args.users)
    exact = np.concatenate([exact_top_k(vectors, queries[i : i + 32], args.k)[0] for i in range(0, len(queries), 32)])
    results = {"items": len(vectors), "dim": vectors.shape[1], "queries": len(queries), "backends": {}}
    for backend in args.backends.split(","):
        start = time.perf_counter()
        index = build_index(vectors, backend)
        build_s = time.perf_counter() - start
        import faiss

        faiss.omp_set_num_threads(1)
        samples, hits = [], 0
        for q, truth in zip(queries, exact):
            t = time.perf_counter()
            cols, _ = index.search(q[None, :], args.k)
            samples.append((time.perf_counter() - t) * 1000)
            hits += len(set(cols[0].tolist()) & set(truth.tolist()))
        p50, p99 = np.percentile(samples, [50, 99])
        results["backends"][backend] = {"build_s": round(build_s, 1), "search_p50_ms": round(float(p50), 3),
                                        "search_p99_ms": round(float(p99), 3),
                                        f"recall_at_{args.k}": round(hits / (args.k * len(queries)), 4),
                                        "params": index.params}
        print(backend, results["backends"][backend], flush=True)
    t = time.perf_counter()
    for q in queries[:50]:
        exact_top_k(vectors, q[None, :], args.k)
    results["exact_ms_per_query"] = round((time.perf_counter() - t) * 1000 / 50, 3)
    print("exact", results["exact_ms_per_query"], "ms per query")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
