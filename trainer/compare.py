"""`recsys compare`: several models trained and evaluated on one split, side by side.

Each model trains once per seed on the same training file and is evaluated through its exported
ONNX model on the same test file (full ranking, seen items excluded: what Recommend with
exclude_seen answers). A row holds every metric's mean over the seeds and its standard
deviation (`<metric>_std`), the mean training seconds and the seeds. Settings are shared;
`members` reach the ensemble only.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from trainer.data.split import write_leave_last_out
from trainer.evaluate import evaluate_artifact
from trainer.families.next_item import TrainConfig
from trainer.pipeline import train_and_export

__all__ = ["compare_models", "format_table"]

COLUMNS = ("ndcg@{k}", "hr@{k}", "mrr@{k}", "auc", "coverage@{k}", "mean_popularity@{k}")


def compare_models(
    interactions: str | Path,
    models: list[str],
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    test: str | Path | None = None,
    users: str | Path | None = None,
    items: str | Path | None = None,
    k: int = 10,
    progress: bool = True,
    log=print,
    columns: dict[str, str] | None = None,
    seeds: tuple[int, ...] = (),
) -> list[dict]:
    """Trains each model with `cfg` (model swapped) once per seed and evaluates it on `test`.

    Without `test`, `interactions` is split leave-last-out first and the models train on the rest.
    `seeds` (default: cfg.seed alone). Artifacts go to out_dir/MODEL (one seed) or
    out_dir/MODEL/seed-S. Writes compare.json and compare.png into `out_dir`; returns one row per model.
    """
    seeds = tuple(seeds) or (cfg.seed,)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = interactions
    if test is None:
        split = write_leave_last_out(interactions, out / "split", columns=columns)
        columns = None  # the split files have the standard names
        train, test = split["train"], split["test"]
    rows = []
    for name in models:
        runs = []
        for seed in seeds:
            where = out / name if len(seeds) == 1 else out / name / f"seed-{seed}"
            own = dataclasses.replace(cfg, model=name, seed=seed, members=cfg.members if name == "ensemble" else ())
            started = time.perf_counter()
            run = dict(users=users, items=items, progress=progress, columns=columns)
            if len(seeds) == 1:
                manifest = train_and_export(train, where, own, log=log, **run)
            else:  # a fresh process per run: torch's exporter mis-specialises a model class exported twice
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    child_log = print if progress else _silent
                    manifest = pool.submit(train_and_export, train, where, own, log=child_log, **run).result()
            seconds = time.perf_counter() - started
            metrics = evaluate_artifact(where, test, k=k, columns=columns)
            runs.append({"train_seconds": seconds, "best_epoch": manifest.training.get("best_epoch"), **metrics})
        rows.append(_summarise(name, seeds, runs))
        log(format_table(rows, k))
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    _plot(rows, k, out / "compare.png")
    return rows


def _silent(*_args) -> None:
    """The log of a quiet run in a child process (a lambda does not cross processes)."""


def _summarise(name: str, seeds: tuple[int, ...], runs: list[dict]) -> dict:
    """One row: the mean of every numeric metric over the seeds, its std as `<metric>_std`."""
    row: dict = {"model": name, "seeds": list(seeds)}
    for key, value in runs[0].items():
        values = [r[key] for r in runs]
        if isinstance(value, bool) or not isinstance(value, int | float) or any(v is None for v in values):
            row[key] = value if len(runs) == 1 else values
            continue
        row[key] = round(float(np.mean(values)), 6 if key != "train_seconds" else 1)
        if len(runs) > 1 and key != "cases":
            row[f"{key}_std"] = round(float(np.std(values)), 6)
    return row


def format_table(rows: list[dict], k: int) -> str:
    """Plain-text table: mean (± std over seeds when there are several) per metric."""
    cols = [c.format(k=k) for c in COLUMNS]
    lines = [f"{'model':<12}" + "".join(f"{c:>22}" for c in cols) + f"{'train s':>10}"]
    for row in rows:
        cells = "".join(
            f"{row[c]:>12.4f} ± {row[c + '_std']:<7.4f}" if c + "_std" in row else f"{row[c]:>22.4f}" for c in cols
        )
        lines.append(f"{row['model']:<12}" + cells + f"{row['train_seconds']:>10.0f}")
    return "\n".join(lines)


def _plot(rows: list[dict], k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = [f"ndcg@{k}", f"hr@{k}", f"mrr@{k}"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(rows), 3.4))
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        ax.bar(
            [i + j * width for i in range(len(rows))],
            [r[key] for r in rows],
            width,
            yerr=[r.get(f"{key}_std", 0.0) for r in rows],
            label=key,
        )
    ax.set_xticks([i + width for i in range(len(rows))], [r["model"] for r in rows])
    ax.set_title("full ranking, seen items excluded")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
