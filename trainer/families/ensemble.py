"""Training an ensemble of next-item models (`model = "ensemble"`, `members = [...]`).

Each member is an ordinary training run (`trainer.families.next_item.fit`: its own early stopping on the
same validation events, its own checkpoints under `<checkpoint_dir>/member<i>`) with the
ensemble's settings overridden by the member's own table, e.g.

    model = "ensemble"
    [[members]]
    model = "sasrec"
    [[members]]
    model = "gru4rec"
    max_len = 200

Member i trains with seed `seed * len(members) + i`, so the members of ensembles with
different seeds never share a seed. The members are then combined, each scaled by the inverse
of its scores' spread on the validation histories (so no member dominates by the size of its
logits alone; a per-user shift does not change a ranking), into one `Ensemble` module that is
exported and served like any single model.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from trainer.families.next_item import FitResult, TrainConfig, fit, member_configs, score_histories, validate
from trainer.models.ensemble import Ensemble

__all__ = ["fit_ensemble"]


def fit_ensemble(
    cfg: TrainConfig,
    sequences: list[np.ndarray],
    num_items: int,
    *,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    log=print,
) -> FitResult:
    """Trains every member in turn, then combines them; the result's metrics are the ensemble's
    on the same validation events the members were selected on, its `best_epoch` the latest of
    the members' best epochs, its history every member's epochs (rows carry "member": i) and
    its `members` one summary per member."""
    start = time.perf_counter()
    configs = member_configs(cfg)
    members, history, resumed = [], [], 0
    for i, member_cfg in enumerate(configs):
        directory = Path(checkpoint_dir) / f"member{i}" if checkpoint_dir else None
        result = fit(member_cfg, sequences, num_items, progress=progress, checkpoint_dir=directory, resume=resume)
        log(
            f"member {i} ({member_cfg.model}, seed {member_cfg.seed}): best epoch {result.best_epoch}, "
            f"ndcg@{cfg.k} {result.best_metrics.get(f'ndcg@{cfg.k}', float('nan')):.4f}"
        )
        members.append(result)
        resumed = max(resumed, result.resumed_from)
        history += [{**row, "member": i} for row in result.history]
    val = [s[:-1] for s in sequences if len(s) >= 3]
    targets = np.array([s[-1] for s in sequences if len(s) >= 3], dtype=np.int64)
    weights = [1.0 / _spread(r.model, val) for r in members]
    model = Ensemble([r.model for r in members], weights).eval()
    metrics = validate(model, val, targets, num_items, cfg) if len(val) else {}
    summary = [
        {
            "model": c.model,
            "seed": c.seed,
            "best_epoch": r.best_epoch,
            "weight": w,
            **{k: v for k, v in r.best_metrics.items() if "@" in k},
        }
        for c, r, w in zip(configs, members, weights)
    ]
    return FitResult(
        model,
        max(r.best_epoch for r in members),
        metrics,
        history,
        time.perf_counter() - start,
        resumed,
        members=summary,
    )


def _spread(model, histories: list[np.ndarray]) -> float:
    """Mean over users of the standard deviation of a model's scores over the catalogue."""
    if not histories:
        return 1.0
    scores = score_histories(model, histories, model.cfg.max_len)
    spread = float(scores.std(axis=1).mean())
    return spread if spread > 0 else 1.0
