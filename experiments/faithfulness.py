"""Faithfulness of the served explanations on a trained artifact (ML-100K by default).

For every user in the artifact, the top-k unseen items by the ONNX model (as Recommend ranks
them) are explained with `inference_server.explain.explain_next_item` (leave-one-out, one
batched run). Then, per (user, item), the score drop is recomputed independently, one history
at a time, when removing
  - the top explaining item,
  - a random item of the window the model reads (seeded),
  - the most recent item,
and the means are reported with the share of cases where the top explaining item's drop is
at least the random item's. Also the time of one explanation run (labelled: measured on a
shared machine).

    python -m experiments.faithfulness --artifact runs/quality/sasrec-seed0 [--k 10] [--users 943]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from inference_server.explain import explain_next_item
from recsys.artifact import HISTORIES, ItemIndex, read_jsonl, read_manifest
from recsys.onnx_session import ModelSession
from recsys.schema import FIRST_TOKEN, OOV, PAD


def window(tokens: list[int], length: int) -> np.ndarray:
    tail = tokens[-length:]
    return np.array([[PAD] * (length - len(tail)) + tail], dtype=np.int64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", default="runs/quality/sasrec-seed0")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--users", type=int, default=0, help="first N users (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the summary as JSON here")
    args = parser.parse_args()
    manifest = read_manifest(args.artifact)
    index = ItemIndex.read(args.artifact)
    session = ModelSession(args.artifact, manifest)
    token = {item: i + FIRST_TOKEN for i, item in enumerate(index.item_ids)}
    length = manifest.max_history
    rng = np.random.default_rng(args.seed)
    rows = list(read_jsonl(f"{args.artifact}/{HISTORIES}"))
    rows = rows[: args.users] if args.users else rows
    drops = {"top": [], "random": [], "recent": []}
    explain_ms, example = [], None
    for row in rows:
        tokens = [token.get(i, OOV) for i in row["item_ids"]]
        known = [t for t in tokens if t >= FIRST_TOKEN]
        if not known:
            continue
        scores = session.scores(window(tokens, length))[0].astype(np.float64)
        scores[np.array(known) - FIRST_TOKEN] = -np.inf
        top = np.argsort(-scores, kind="stable")[: args.k]
        started = time.perf_counter()
        why = explain_next_item(
            session.scores, np.array(tokens, dtype=np.int64), length, top, index.item_ids, index.titles
        )
        explain_ms.append((time.perf_counter() - started) * 1000)
        read = sorted({t for t in tokens[-length:] if t >= FIRST_TOKEN})
        for col, because in zip(top, why.because_items):
            if not because:
                continue
            base = scores[col]

            def drop(removed: int, base=base, col=col, tokens=tokens) -> float:
                return float(base - session.scores(window([t for t in tokens if t != removed], length))[0, col])

            drops["top"].append(drop(token[because[0].name]))
            drops["random"].append(drop(int(rng.choice(read))))
            drops["recent"].append(drop(next(t for t in reversed(tokens) if t >= FIRST_TOKEN)))
        if example is None and why.because_items[0]:
            example = {
                "user_id": row["user_id"],
                "item": index.titles[top[0]],
                "because": [a.title or a.name for a in why.because_items[0]],
            }
    top, rand = np.array(drops["top"]), np.array(drops["random"])
    summary = {
        "artifact": args.artifact,
        "users": len(rows),
        "k": args.k,
        "explained_cases": len(top),
        "mean_drop_top_explainer": float(top.mean()),
        "mean_drop_random_history_item": float(rand.mean()),
        "mean_drop_most_recent_item": float(np.mean(drops["recent"])),
        "share_top_ge_random": float((top >= rand - 1e-6).mean()),
        "share_top_gt_random": float((top > rand + 1e-6).mean()),
        "explain_ms_median": statistics.median(explain_ms),
        "explain_ms_p99": float(np.percentile(explain_ms, 99)),
        "timing_note": "one batched ONNX run per request (1 + distinct window items rows), measured on a shared, loaded 2-core machine",
        "example": example,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
