"""The run report inside every artifact: report.json (what happened, epoch by epoch) and
curves.png (training loss and validation metrics against epochs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["REPORT_JSON", "REPORT_PNG", "write_report"]

REPORT_JSON = "report.json"
REPORT_PNG = "curves.png"


def write_report(
    directory: Path, training: dict[str, Any], metrics: dict[str, Any], keys: Sequence[str] | None = None
) -> list[str]:
    """Writes both files into `directory`; returns their names. `keys`: the validation metrics
    to plot (default: every ranking metric, `name@k`, found in the history)."""
    history = training.get("history", [])
    (directory / REPORT_JSON).write_text(json.dumps({"training": training, "metrics": metrics}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    keys = list(keys) if keys is not None else sorted({k for row in history for k in row if "@" in k})
    runs = sorted({row.get("member") for row in history}, key=lambda m: -1 if m is None else m)
    for run in runs:  # one run, or an ensemble's members (rows carry "member": i)
        rows = [row for row in history if row.get("member") == run]
        tag = "" if run is None else f"member {run} "
        trained = [row for row in rows if "loss" in row]  # closed-form fits have no loss
        left.plot([row["epoch"] for row in trained], [row["loss"] for row in trained], label=tag or None)
        evaluated = [row for row in rows if any(key in row for key in keys)]
        drawn: dict[tuple, list[str]] = {}  # metrics whose curves coincide are drawn once, named together
        for key in keys:
            drawn.setdefault(tuple(r.get(key) for r in evaluated), []).append(key)
        for series, names in drawn.items():
            if any(v is None for v in series):
                continue
            epochs = [r["epoch"] for r in evaluated]
            right.plot(epochs, list(series), marker="o", ms=3, label=tag + " = ".join(names))
    for axis in (left, right):  # whole epochs on the axis, however short the run
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    if len(runs) > 1:
        left.legend(fontsize=8)
    best = training.get("best_epoch") if len(runs) == 1 else None
    if best:
        right.axvline(best, color="grey", ls="--", lw=1, label=f"best epoch {best}")
    right.set(xlabel="epoch", title="validation")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / REPORT_PNG, dpi=100)
    plt.close(fig)
    return [REPORT_JSON, REPORT_PNG]
