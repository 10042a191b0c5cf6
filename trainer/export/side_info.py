"""Export of a sequential model with side information (trainer/models/side_info.py): a
next-item artifact whose graph reads the user's features beside the history, served exactly as
the two-tower's user tower (trainer/export/two_tower.py):

    name       dtype    shape                 manifest source  values
    user_cat   int64    (B, n_user_cat)       user.cat         FeatureEncoder tokens (PAD missing, OOV unseen)
    user_num   float32  (B, n_user_num)       user.num         standardised values, 0 = missing
    history    int64    (B, L'), 1 <= L' <= L user.history     most recent item tokens, left-padded
    output: scores float32 (B, N), columns in item_index.json order.

user_cat and user_num are there only when the model reads user features (and a feature of that
kind exists); training["inputs"] then records the feature order. Item features are folded into a
constant item table at export (`SideInfoModel.export_view`), so serving reads no item features.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recsys.artifact import (
    ITEM_INDEX,
    MODEL,
    Manifest,
    ModelInput,
    write_atomically,
)
from trainer.export.onnx import seal_manifest, set_metadata, versions
from trainer.export.ranker import train_then_export
from trainer.export.report import write_report
from trainer.export.tables import TABLE_FILES, data_summary, write_tables
from trainer.export.two_tower import export_user_graph, user_graph_parity, user_input_specs
from trainer.families.next_item import TrainConfig
from trainer.families.side_info import SideInfoRun, train_side_info
from trainer.models.side_info import SideInfoModel

__all__ = ["SideInfoScorer", "export_side_info", "side_info_inputs", "train_and_export_side_info"]

OUTPUT = "scores"


class SideInfoScorer(nn.Module):
    """The served graph: (history, [user_cat], [user_num]) -> scores (B, N) after the last position."""

    def __init__(self, model: SideInfoModel):
        super().__init__()
        self.model = model

    def forward(
        self,
        history: torch.Tensor,
        user_cat: torch.Tensor | None = None,
        user_num: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(history, user_cat, user_num)


def side_info_inputs(model: SideInfoModel, max_len: int) -> list[ModelInput]:
    """The graph's inputs in two-tower order (user_cat, user_num, history), those the model reads."""
    return user_input_specs(len(model.cfg.user_cat), model.cfg.n_user_num, max_len)


def export_side_info(run: SideInfoRun, out_dir: str | Path) -> Manifest:
    """Writes the artifact of `run` to `out_dir` atomically and returns its manifest."""
    cfg, data, result, model = run.config, run.data, run.fit, run.fit.model
    tables, index, schema = run.tables, run.index, run.schema
    view = SideInfoScorer(model.export_view()).eval()
    specs = side_info_inputs(model, cfg.max_len)
    box: dict[str, Manifest] = {}

    graph = (specs, model.cfg.user_cat, model.cfg.num_items, cfg.max_len, OUTPUT)

    def fill(tmp: Path) -> None:
        export_user_graph(view, tmp / MODEL, *graph, other_dims=(model.cfg.hidden,))
        diff = user_graph_parity(view, tmp / MODEL, *graph)
        (tmp / ITEM_INDEX).write_text(json.dumps(index.to_dict(), ensure_ascii=False))
        write_tables(tmp, tables, schema)
        training: dict[str, Any] = {
            "config": asdict(cfg),
            "resolved": result.settings,
            "side_info": {"user_features": data.user_features, "item_features": data.item_features},
            **({"content": data.spec.to_dict()} if data.spec is not None else {}),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "seconds": round(result.seconds, 1),
            "history": result.history,
            "data": data_summary(tables.report),
        }
        if model.reads_users:  # the server builds user_cat / user_num from this description
            training["inputs"] = {**data.encoder.describe(), "order": [s.name for s in specs]}
        metrics = {
            **{f"valid_{k}": v for k, v in result.best_metrics.items() if "@" in k},
            "export_parity_max_abs_diff": diff,
        }
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = Manifest(
            model_kind=cfg.model,
            task="next_item",
            model_version="",
            inputs=tuple(specs),
            output=OUTPUT,
            num_items=len(index.item_ids),
            schema=schema,
            item_index_sha256=index.sha256,
            training=training,
            metrics=metrics,
            versions=versions(),
            created_at=created,
        )
        set_metadata(tmp / MODEL, {"recsys.manifest": manifest.to_json()})
        reports = write_report(tmp, training, metrics, (f"ndcg@{cfg.k}", f"hr@{cfg.k}"))
        box["m"] = seal_manifest(tmp, manifest, (MODEL, ITEM_INDEX, *TABLE_FILES, *reports))

    write_atomically(out_dir, fill)
    return box["m"]


def train_and_export_side_info(
    interactions: str | Path | None,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    user_features: bool,
    item_features: bool,
    **options,
) -> Manifest | None:
    """Train (trainer/families/side_info.py train_side_info) and export, as
    trainer/export/ranker.py train_then_export does; rank 0 under DDP returns the manifest."""
    train = functools.partial(train_side_info, user_features=user_features, item_features=item_features)
    return train_then_export(train, export_side_info, cfg, interactions, out_dir, **options)
