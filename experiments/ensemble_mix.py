"""Which trained models would an ensemble gain from? Mixes of `recsys compare` artifacts, offline.

    python -m experiments.ensemble_mix --runs DIR[,DIR...] [--seeds 0,1,2] [--out FILE.json]

Each DIR is a `recsys compare --out` directory (`DIR/<model>/seed-<s>/` artifacts trained on
`DIR/split/train.csv`, its users' held-out events in `DIR/split/test.csv`); every run must hold
the same split. Every next-item artifact that reads only the history is scored twice over the
whole catalogue, as the trainer validates and as `recsys evaluate` tests: on each user's history
less its last event (target: that event, the validation target of the training run) and on the
whole history (target: the test event), items already in the history excluded.

A mix takes one artifact per family and seed (`seed-<s>`, or `seed-0` for a family trained
once), standardises each one's scores per user (mean 0, sd 1 over the catalogue) and sums
them: the combination rule of `model = "ensemble"`, up to its per-member weights. Reported per
mix: NDCG@k on validation and on test, means over seeds, ranked by validation; and, as a bound
on what more members of the same families give, the families of the best mix with every seed's
artifact at once (one mix, not independent seeds). The mixes are not served: training one as an ensemble is a
separate run (configs/ensemble.toml).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.artifact import SOURCE_USER_HISTORY
from recsys.onnx_session import ModelSession
from recsys.schema import FIRST_TOKEN, PAD
from trainer.evaluation.tables import ArtifactTables

SPLITS = ("validation", "test")


def _artifacts(runs: list[Path]) -> dict[str, dict[int, Path]]:
    """family name -> seed -> artifact directory, for artifacts the mix can score."""
    found: dict[str, dict[int, Path]] = {}
    for run in runs:
        for seed_dir in sorted(run.glob("*/seed-*/manifest.json")):
            artifact = seed_dir.parent
            manifest = json.loads(seed_dir.read_text())
            sources = {i["source"] for i in manifest["inputs"]}
            if manifest.get("task") != "next_item" or sources != {SOURCE_USER_HISTORY}:
                print(f"skipped {artifact}: reads {sorted(sources)}, not the history alone")
                continue
            family = artifact.parent.name if len(runs) == 1 else f"{run.name}/{artifact.parent.name}"
            found.setdefault(family, {})[int(artifact.name.split("-", 1)[1])] = artifact
    return found


def _score(artifact: Path, users: list[str], test_item: dict[str, str], batch: int = 256) -> dict[str, np.ndarray]:
    """(U, N) standardised scores, seen masks and target columns for both splits."""
    tables = ArtifactTables.read(artifact)
    session = ModelSession(artifact, tables.manifest, device="cpu", threads=1)
    name = {i.source: i.name for i in tables.manifest.inputs}[SOURCE_USER_HISTORY]
    width, columns = tables.manifest.max_history, len(tables.index.item_ids)
    column = {item: c for c, item in enumerate(tables.index.item_ids)}
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        windows = np.full((len(users), width), PAD, dtype=np.int64)
        seen = np.zeros((len(users), columns), dtype=bool)
        targets = np.full(len(users), -1, dtype=np.int64)
        for r, user in enumerate(users):
            history = tables.history(user)
            if split == "validation":
                history, target = history[:-1], history[-1] - FIRST_TOKEN
            else:
                target = column.get(test_item.get(user, ""), -1)
            targets[r] = target
            tail = history[-width:]
            if len(tail):
                windows[r, -len(tail) :] = tail
            known = history[history >= FIRST_TOKEN] - FIRST_TOKEN
            seen[r, known] = True
        scores = np.concatenate([session.run({name: windows[i : i + batch]}) for i in range(0, len(users), batch)])
        scores = (scores - scores.mean(1, keepdims=True)) / (scores.std(1, keepdims=True) + 1e-9)
        out[split], out[f"{split}_seen"], out[f"{split}_targets"] = scores.astype(np.float32), seen, targets
    out["item_ids"] = np.asarray(tables.index.item_ids)
    return out


def ndcg(scores: np.ndarray, seen: np.ndarray, targets: np.ndarray, k: int) -> float:
    """NDCG@k over every user (a target outside the catalogue counts 0), seen items excluded."""
    masked = np.where(seen, -np.inf, scores)
    rows = np.arange(len(masked))
    target_scores = masked[rows, np.maximum(targets, 0)]
    rank = (masked > target_scores[:, None]).sum(1)
    gains = np.where((targets >= 0) & ~seen[rows, np.maximum(targets, 0)] & (rank < k), 1 / np.log2(rank + 2), 0.0)
    return float(gains.mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="comma-separated `recsys compare --out` directories")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-members", type=int, default=6, help="largest mix of families tried")
    parser.add_argument("--top", type=int, default=15, help="mixes printed")
    parser.add_argument("--out", help="write every mix's figures here (JSON)")
    args = parser.parse_args(argv)
    runs = [Path(r) for r in args.runs.split(",") if r]
    seeds = [int(s) for s in args.seeds.split(",")]
    test = pd.read_csv(runs[0] / "split" / "test.csv", dtype=str)
    test_item = dict(zip(test["user_id"], test["item_id"]))
    users = sorted(test_item)
    families = _artifacts(runs)
    scored: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for family, by_seed in sorted(families.items()):
        for seed, artifact in sorted(by_seed.items()):
            scored[family, seed] = _score(artifact, users, test_item)
            if not np.array_equal(scored[family, seed]["item_ids"], next(iter(scored.values()))["item_ids"]):
                raise SystemExit(f"{artifact}: another item index than the first artifact (not the same split?)")

    def member(family: str, seed: int) -> dict[str, np.ndarray]:
        return scored.get((family, seed)) or scored[family, min(families[family])]

    def figures(members_per_seed: list[list[dict[str, np.ndarray]]]) -> dict[str, float]:
        result = {}
        for split in SPLITS:
            values = [
                ndcg(sum(m[split] for m in ms), ms[0][f"{split}_seen"], ms[0][f"{split}_targets"], args.k)
                for ms in members_per_seed
            ]
            result[split] = float(np.mean(values))
        return result

    rows = []
    names = sorted(families)
    for size in range(1, min(args.max_members, len(names)) + 1):
        for mix in itertools.combinations(names, size):
            rows.append({"mix": list(mix), **figures([[member(f, s) for f in mix] for s in seeds])})
    rows.sort(key=lambda r: -r["validation"])
    best = rows[0]["mix"]
    pooled_keys = [(f, s) for f in best for s in sorted(families[f])]
    pooled = figures([[scored[key] for key in pooled_keys]])
    print(f"NDCG@{args.k}, means over seeds {args.seeds}, ranked by validation:")
    print(f"{'validation':>10} {'test':>7}  mix")
    for row in rows[: args.top]:
        print(f"{row['validation']:>10.4f} {row['test']:>7.4f}  {' + '.join(row['mix'])}")
    print(f"{pooled['validation']:>10.4f} {pooled['test']:>7.4f}  the first mix's {len(pooled_keys)} artifacts at once")
    if args.out:
        report = {"k": args.k, "seeds": seeds, "mixes": rows, "pooled": {"artifacts": len(pooled_keys), **pooled}}
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
