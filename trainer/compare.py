"""`recsys compare`: several models trained and evaluated on one split, side by side."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

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
) -> list[dict]:
    """Trains each model with `cfg` (model swapped) and evaluates it on `test`.

    Without `test`, `interactions` is split leave-last-out first and the models train on the rest.
    Writes compare.json and compare.png into `out_dir`; returns one row per model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = interactions
    if test is None:
        split = write_leave_last_out(interactions, out / "split", columns=columns)
        columns = None  # the split files have the standard names
        train, test = split["train"], split["test"]
    rows = []
    for name in models:
        started = time.perf_counter()
        manifest = train_and_export(
            train,
            out / name,
            dataclasses.replace(cfg, model=name),
            users=users,
            items=items,
            progress=progress,
            log=log,
            columns=columns,
        )
        seconds = time.perf_counter() - started
        metrics = evaluate_artifact(out / name, test, k=k, columns=columns)
        rows.append(
            {
                "model": name,
                "train_seconds": round(seconds, 1),
                "best_epoch": manifest.training.get("best_epoch"),
                **metrics,
            }
        )
        log(format_table(rows, k))
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    _plot(rows, k, out / "compare.png")
    return rows


def format_table(rows: list[dict], k: int) -> str:
    cols = [c.format(k=k) for c in COLUMNS]
    lines = [f"{'model':<10}" + "".join(f"{c:>20}" for c in cols) + f"{'train s':>10}"]
    for row in rows:
        lines.append(
            f"{row['model']:<10}" + "".join(f"{row[c]:>20.4f}" for c in cols) + f"{row['train_seconds']:>10.0f}"
        )
    return "\n".join(lines)


def _plot(rows: list[dict], k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = [f"ndcg@{k}", f"hr@{k}", f"mrr@{k}"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(rows), 3.4))
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        ax.bar([i + j * width for i in range(len(rows))], [r[key] for r in rows], width, label=key)
    ax.set_xticks([i + width for i in range(len(rows))], [r["model"] for r in rows])
    ax.set_title("full ranking, seen items excluded")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
