"""Export of a feature-based ranker (DeepFM, DCN-v2, Conv1D CTR) or rating model to an artifact.

The ONNX input contract (what the serving side builds, per (user, candidate item) row; B is
dynamic; an input whose feature count is 0 is left out of the graph and the manifest). The
user-side inputs (user_cat, user_num, history, user_id; first axis "users" in the manifest)
take either B rows or ONE row that serves all B candidates: the server feeds one, so a
request's history is pooled once, not once per candidate (artifacts from before this have
"batch" there, and the server repeats the user's row for them):

    name        dtype    shape                   manifest source  values
    user_cat    int64    (B, n_user_cat)         user.cat         FeatureSpec.encode_category of the
                                                                  user's CATEGORICAL features
    user_num    float32  (B, n_user_num)         user.num         encode_numeric of NUMERIC features
    item_id     int64    (B,)                    item.id          item_index.json position + 2; 1 = OOV
    item_cat    int64    (B, n_item_cat)         item.cat         as user_cat, item features
    item_num    float32  (B, n_item_num)         item.num         as user_num, item features
    item_multi  int64    (B, n_item_multi, M)    item.multi       encode_categories of each
                                                                  MULTI_CATEGORICAL item feature, first
                                                                  M tokens, right-padded with 0
    history     int64    (B, L'), 1 <= L' <= L   user.history     item tokens of the user's most recent
                                                                  events, oldest first, left-padded with 0
    user_id     int64    (B,)                    user.id          user_index.json position + 2; 1 = a user
                                                                  unseen in training (RankConfig.user_id)
    output: score float32 (B,): probability (task "rank") or predicted rating (task "rating").

Features are in schema order within each input; the names per input, M (`item_multi_len`) and
L (`history_len`) are in manifest.training["inputs"]. A missing feature value encodes as the
schema's encoders say (PAD / 0.0); TEXT features are not read. The artifact carries the same
tables as the sequential export (item_index.json, histories.jsonl, users.jsonl, items.jsonl)
and the same schema (hence hash) as a sequential model trained on the same tables.
"""

from __future__ import annotations

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
    USER_INDEX,
    Manifest,
    ModelInput,
    write_atomically,
)
from recsys.schema import FIRST_TOKEN, OOV, PAD
from trainer.data.examples import RankingData, field_layout
from trainer.export.onnx import compare_with_onnx, export_quietly, seal_manifest, set_metadata, versions
from trainer.export.report import write_report
from trainer.export.tables import TABLE_FILES, data_summary, write_tables
from trainer.families.ranker import INPUTS, RankConfig, RankRun, reads_user_id, train_ranker
from trainer.models.custom import kind_of

__all__ = [
    "SOURCES",
    "RankerInputs",
    "export_ranker",
    "parity_check",
    "ranker_inputs",
    "train_and_export_ranker",
    "train_then_export",
]

SOURCES = {
    "user_cat": "user.cat",
    "user_num": "user.num",
    "item_id": "item.id",
    "item_cat": "item.cat",
    "item_num": "item.num",
    "item_multi": "item.multi",
    "history": "user.history",
    "user_id": "user.id",
}
OUTPUT = "score"
USER_INPUTS = ("user_cat", "user_num", "history", "user_id")  # one row may serve every candidate
RANK_KEYS, RATING_KEYS = ("valid_auc", "valid_logloss"), ("valid_rmse", "valid_mae")


class RankerInputs(nn.Module):
    """Takes only the present inputs, by name, so absent ones are not graph inputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        user_cat: torch.Tensor | None = None,
        user_num: torch.Tensor | None = None,
        item_id: torch.Tensor | None = None,
        item_cat: torch.Tensor | None = None,
        item_num: torch.Tensor | None = None,
        item_multi: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
        user_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(user_cat, user_num, item_id, item_cat, item_num, item_multi, history, user_id)


def ranker_inputs(data: RankingData, with_user_id: bool = False) -> list[ModelInput]:
    """The present inputs, in INPUTS order, with their sources and shapes (user_id only
    `with_user_id`)."""
    enc = data.encoder
    shapes: dict[str, tuple[str, ...]] = {
        "user_cat": ("users", str(len(enc.user_cat))),
        "user_num": ("users", str(len(enc.user_num))),
        "item_id": ("batch",),
        "item_cat": ("batch", str(len(enc.item_cat))),
        "item_num": ("batch", str(len(enc.item_num))),
        "item_multi": ("batch", str(len(enc.item_multi)), str(enc.multi_len)),
        "history": ("users", "seq"),
        "user_id": ("users",),
    }
    present = {
        "user_cat": len(enc.user_cat),
        "user_num": len(enc.user_num),
        "item_id": 1,
        "item_cat": len(enc.item_cat),
        "item_num": len(enc.item_num),
        "item_multi": len(enc.item_multi),
        "history": enc.history_len,
        "user_id": int(with_user_id),
    }
    return [
        ModelInput(n, SOURCES[n], "float32" if n.endswith("_num") else "int64", shapes[n]) for n in INPUTS if present[n]
    ]


def random_inputs(
    specs: list[ModelInput],
    data: RankingData,
    batch: int,
    seq: int,
    gen: torch.Generator,
    pad_history: int = 0,
    users: int | None = None,
) -> dict[str, torch.Tensor]:
    """Random valid inputs (PAD and OOV included) for export examples and parity cases; the
    user-side inputs get `users` rows (default: `batch`)."""
    out: dict[str, torch.Tensor] = {}
    layout = field_layout(data.encoder, data.num_items)
    vocab = {"user_cat": layout.user_cat, "item_cat": layout.item_cat}
    for spec in specs:
        n = spec.name
        rows = users if users is not None and n in USER_INPUTS else batch
        if n.endswith("_num"):
            out[n] = torch.randn(rows, int(spec.shape[1]), generator=gen)
        elif n == "user_id":
            out[n] = torch.randint(OOV, data.user_vocab, (rows,), generator=gen)
        elif n in ("item_id", "history"):
            shape = (rows,) if n == "item_id" else (rows, seq)
            out[n] = torch.randint(OOV, data.num_items + FIRST_TOKEN, shape, generator=gen)
            if n == "history":
                out[n][:, : min(pad_history, seq)] = PAD
        elif n == "item_multi":
            sizes = layout.item_multi
            out[n] = torch.stack(
                [torch.randint(PAD, v, (rows, data.encoder.multi_len), generator=gen) for v in sizes], dim=1
            )
        else:
            out[n] = torch.stack([torch.randint(PAD, v, (rows,), generator=gen) for v in vocab[n]], dim=1)
    return out


def export_onnx(model: nn.Module, path: Path, specs: list[ModelInput], data: RankingData) -> None:
    """Writes one ONNX file with a dynamic batch axis (and a dynamic history length)."""
    model.eval()
    seq = max(1, data.encoder.history_len)
    static = {int(d) for s in specs for d in s.shape if d.isdigit()} | {seq}
    batch, users = [b for b in (7, 11, 13, 17, 19, 23, 29, 31, 37) if b not in static][:2]  # >= 2, unlike any other dim
    example = random_inputs(
        specs, data, batch, seq, torch.Generator().manual_seed(0), pad_history=seq // 2, users=users
    )
    b_dim = torch.export.Dim("batch", min=1, max=65536)
    u_dim = torch.export.Dim("users", min=1, max=65536)
    dynamic: dict[str, dict[int, Any]] = {n: {0: u_dim if n in USER_INPUTS else b_dim} for n in example}
    if "history" in example and seq >= 2:
        dynamic["history"][1] = torch.export.Dim("seq", min=1, max=seq)
    export_quietly(RankerInputs(model), path, (), example, list(example), OUTPUT, dynamic)


def parity_check(model: nn.Module, onnx_path: Path, specs: list[ModelInput], data: RankingData, seed: int = 0) -> float:
    """Max |torch - ORT| over batch 1, larger batches, padded and all-PAD histories and a short
    history; raises ExportError above PARITY_TOLERANCE or on a shape mismatch."""
    gen = torch.Generator().manual_seed(seed)
    seq = max(1, data.encoder.history_len)
    cases = [
        (1, seq, 0, None),
        (8, seq, seq - 1, None),
        (5, max(1, seq // 3), 1, None),
        (3, seq, seq, None),
        (64, seq, seq // 2, None),
        (64, seq, seq // 2, 1),
        (9, max(1, seq // 3), 0, 1),
    ]  # users = 1: serving
    inputs = [
        random_inputs(specs, data, batch, length, gen, pad_history=pad, users=users)
        for batch, length, pad, users in cases
    ]
    return compare_with_onnx(RankerInputs(model), onnx_path, OUTPUT, inputs)


def export_ranker(run: RankRun, out_dir: str | Path) -> Manifest:
    """Writes the artifact of `run` to `out_dir` atomically and returns its manifest."""
    cfg, data, model = run.config, run.data, run.fit.model
    specs = ranker_inputs(data, reads_user_id(model))
    box: dict[str, Manifest] = {}

    def fill(tmp: Path) -> None:
        onnx_path = tmp / MODEL
        export_onnx(model, onnx_path, specs, data)
        max_diff = parity_check(model, onnx_path, specs, data)
        (tmp / ITEM_INDEX).write_text(json.dumps(run.index.to_dict(), ensure_ascii=False))
        extra = [USER_INDEX] if reads_user_id(model) else []
        if extra:
            (tmp / USER_INDEX).write_text(json.dumps({"user_ids": data.user_index}, ensure_ascii=False))
        write_tables(tmp, run.tables, run.schema)
        training = {
            "config": asdict(cfg),
            "inputs": {**data.encoder.describe(), "order": [s.name for s in specs]},
            "best_epoch": run.fit.best_epoch,
            "epochs_run": len(run.fit.history),
            "seconds": round(run.fit.seconds, 1),
            "history": run.fit.history,
            "data": {
                **data_summary(run.tables.report),
                "examples": {
                    "train": int((data.split == 0).sum()),
                    "valid": int((data.split == 1).sum()),
                    "test": int((data.split == 2).sum()),
                },
            },
        }
        metrics = {**run.fit.best_metrics, **run.test_metrics, "export_parity_max_abs_diff": max_diff}
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = Manifest(
            model_kind=kind_of(cfg.model),
            task=cfg.task,
            model_version="",
            inputs=tuple(specs),
            output=OUTPUT,
            num_items=len(run.index.item_ids),
            schema=run.schema,
            item_index_sha256=run.index.sha256,
            training=training,
            metrics=metrics,
            versions=versions(),
            created_at=created,
        )
        set_metadata(onnx_path, {"recsys.manifest": manifest.to_json()})
        reports = write_report(tmp, training, metrics, RATING_KEYS if cfg.task == "rating" else RANK_KEYS)
        box["m"] = seal_manifest(tmp, manifest, (MODEL, ITEM_INDEX, *extra, *TABLE_FILES, *reports))

    write_atomically(out_dir, fill)
    return box["m"]


def train_then_export(
    train,
    export,
    cfg,
    interactions: str | Path | None,
    out_dir: str | Path,
    *,
    checkpoint_dir: str | Path | None = None,
    log=print,
    **options,
) -> Manifest | None:
    """`train(cfg, interactions, **options)` then `export(run, out_dir)`, for the families that
    read features. The training state is checkpointed every epoch into `checkpoint_dir` (default
    `<out_dir>.ckpt` beside the artifact); `resume=True` in `options` continues an interrupted
    run from there. Under DDP every rank trains; rank 0 exports and returns the manifest, the
    others None."""
    checkpoint_dir = checkpoint_dir or Path(out_dir).with_name(Path(out_dir).name + ".ckpt")
    if options.get("tables") is not None:
        interactions = None
    run = train(cfg, interactions, checkpoint_dir=checkpoint_dir, log=log, **options)
    if run is None:
        return None
    manifest = export(run, out_dir)
    log(f"wrote {out_dir} ({manifest.model_version})")
    return manifest


def train_and_export_ranker(
    cfg: RankConfig, interactions: str | Path | None, out_dir: str | Path, **options
) -> Manifest | None:
    """`recsys train --model deepfm|...`: tables -> examples -> fit -> test once -> artifact.
    `options`: users, items, tables, progress, log, resume, checkpoint_dir (train_then_export)."""
    return train_then_export(train_ranker, export_ranker, cfg, interactions, out_dir, **options)
