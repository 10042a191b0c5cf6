"""Export of the two-tower retrieval model: a next-item artifact that reads user features too.

The served graph (`model.onnx`, task "next_item") computes the user vector and scores it
against every item's vector, precomputed by the item tower at export and stored in the graph:

    name       dtype    shape                 manifest source  values
    user_cat   int64    (B, n_user_cat)       user.cat         as trainer/export/ranker.py
    user_num   float32  (B, n_user_num)       user.num         as trainer/export/ranker.py
    history    int64    (B, L'), 1 <= L' <= L user.history     most recent item tokens, left-padded
    output: scores float32 (B, N), columns in item_index.json order.

An input whose feature count is 0 is left out. The artifact also carries, for an ANN index:
`item_embeddings.npy` (N, D) float32, the item vectors in item-index order (L2-normalised),
and `user_tower.onnx`, the same inputs -> `user_vector` (B, D) already divided by the
temperature, so scores = user_vector @ item_embeddings.T (manifest.training["retrieval"]).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys.artifact import (
    ITEM_INDEX,
    MODEL,
    Manifest,
    ModelInput,
    write_atomically,
)
from recsys.schema import FIRST_TOKEN, OOV, PAD
from trainer.export.onnx import compare_with_onnx, export_quietly, seal_manifest, set_metadata, versions
from trainer.export.ranker import SOURCES, train_then_export
from trainer.export.report import write_report
from trainer.export.tables import TABLE_FILES, data_summary, write_tables
from trainer.families.two_tower import (
    RetrievalConfig,
    RetrievalData,
    RetrievalRun,
    all_item_vectors,
    train_two_tower,
)
from trainer.models.two_tower import TwoTower, TwoTowerScorer

__all__ = ["ITEM_EMBEDDINGS", "USER_TOWER", "export_two_tower", "train_and_export_two_tower"]

ITEM_EMBEDDINGS = "item_embeddings.npy"
USER_TOWER = "user_tower.onnx"
OUTPUT, USER_OUTPUT = "scores", "user_vector"
USER_INPUTS = ("user_cat", "user_num", "history")


class UserTower(nn.Module):
    """user inputs -> user_vector (B, D) / temperature: dot products with item_embeddings are scores."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model

    def forward(
        self,
        user_cat: torch.Tensor | None = None,
        user_num: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model.user_vectors(user_cat, user_num, history) / self.model.cfg.temperature


def user_input_specs(user_cat: int, user_num: int, history: int) -> list[ModelInput]:
    """The user-side graph inputs in USER_INPUTS order, those with a width (features or items)."""
    sizes = {"user_cat": user_cat, "user_num": user_num, "history": history}
    return [
        ModelInput(
            n,
            SOURCES[n],
            "float32" if n == "user_num" else "int64",
            ("batch", "seq") if n == "history" else ("batch", str(sizes[n])),
        )
        for n in USER_INPUTS
        if sizes[n]
    ]


def user_inputs(data: RetrievalData) -> list[ModelInput]:
    enc = data.encoder
    return user_input_specs(len(enc.user_cat), len(enc.user_num), enc.history_len)


def random_user_inputs(
    specs: list[ModelInput],
    user_cat: Sequence[int],
    num_items: int,
    batch: int,
    seq: int,
    gen: torch.Generator,
    pad: int,
) -> dict[str, torch.Tensor]:
    """Random values for `specs`: user_cat tokens below each field's vocabulary size, standard
    normal user_num, history tokens (OOV or an item) left-padded with `pad` PADs."""
    out: dict[str, torch.Tensor] = {}
    for spec in specs:
        if spec.name == "user_num":
            out["user_num"] = torch.randn(batch, int(spec.shape[1]), generator=gen)
        elif spec.name == "user_cat":
            out["user_cat"] = torch.stack([torch.randint(PAD, v, (batch,), generator=gen) for v in user_cat], 1)
        else:
            h = torch.randint(OOV, num_items + FIRST_TOKEN, (batch, seq), generator=gen)
            h[:, : min(pad, seq)] = PAD
            out["history"] = h
    return out


def export_user_graph(
    module: nn.Module,
    path: Path,
    specs: list[ModelInput],
    user_cat: Sequence[int],
    num_items: int,
    seq: int,
    output: str,
    other_dims: Sequence[int] = (),
) -> None:
    """`module` over the user inputs `specs` as one ONNX file with dynamic batch (and history
    length) axes. `other_dims`: sizes inside the model the example batch must not equal."""
    static = {int(d) for s in specs for d in s.shape if d.isdigit()} | {seq, *other_dims}
    batch = next(b for b in (7, 11, 13, 17, 19, 23, 29) if b not in static)  # >= 2, unlike any other dim
    example = random_user_inputs(specs, user_cat, num_items, batch, seq, torch.Generator().manual_seed(0), pad=0)
    b_dim = torch.export.Dim("batch", min=1, max=65536)
    dynamic: dict[str, dict[int, Any]] = {n: {0: b_dim} for n in example}
    if "history" in example:
        # One padded row among unpadded ones: every row padded alike lets the exporter fix the length.
        example["history"][0, : seq // 2] = PAD
        if seq >= 2:
            dynamic["history"][1] = torch.export.Dim("seq", min=1, max=seq)
    export_quietly(module.eval(), path, (), example, list(example), output, dynamic)


def user_graph_parity(
    module: nn.Module,
    path: Path,
    specs: list[ModelInput],
    user_cat: Sequence[int],
    num_items: int,
    seq: int,
    output: str,
    seed: int = 0,
) -> float:
    """Max |torch - ORT| over batch 1, larger batches, padded, all-PAD and short histories;
    raises ExportError above PARITY_TOLERANCE or on a shape mismatch."""
    gen = torch.Generator().manual_seed(seed)
    cases = [(1, seq, 0), (8, seq, seq - 1), (5, max(1, seq // 3), 1), (3, seq, seq), (32, seq, seq // 2)]
    inputs = [random_user_inputs(specs, user_cat, num_items, b, length, gen, pad) for b, length, pad in cases]
    return compare_with_onnx(module, path, output, inputs)


def export_two_tower(run: RetrievalRun, out_dir: str | Path) -> Manifest:
    """Writes the artifact of `run` to `out_dir` atomically and returns its manifest."""
    cfg, data, model = run.config, run.data, run.fit.model
    model.eval()
    specs = user_inputs(data)
    vectors = all_item_vectors(model, data)  # (N, D)
    scorer, tower = TwoTowerScorer(model, vectors).eval(), UserTower(model).eval()
    box: dict[str, Manifest] = {}

    layout, seq = model.cfg.fields, model.cfg.history_len

    def fill(tmp: Path) -> None:
        graphs = ((scorer, MODEL, OUTPUT), (tower, USER_TOWER, USER_OUTPUT))
        for module, name, output in graphs:
            export_user_graph(
                module, tmp / name, specs, layout.user_cat, layout.num_items, seq, output, (model.cfg.dim,)
            )
        diff = max(
            user_graph_parity(module, tmp / name, specs, layout.user_cat, layout.num_items, seq, output)
            for module, name, output in graphs
        )
        np.save(tmp / ITEM_EMBEDDINGS, vectors.numpy().astype(np.float32))
        (tmp / ITEM_INDEX).write_text(json.dumps(run.index.to_dict(), ensure_ascii=False))
        write_tables(tmp, run.tables, run.schema)
        training = {
            "config": asdict(cfg),
            "inputs": {**data.encoder.describe(), "order": [s.name for s in specs]},
            "retrieval": {
                "item_embeddings": ITEM_EMBEDDINGS,
                "user_tower": USER_TOWER,
                "user_output": USER_OUTPUT,
                "dim": int(vectors.shape[1]),
                "metric": "inner_product",
                "note": "scores = user_vector @ item_embeddings.T; rows in item_index.json order",
            },
            "best_epoch": run.fit.best_epoch,
            "epochs_run": len(run.fit.history),
            "seconds": round(run.fit.seconds, 1),
            "history": run.fit.history,
            "data": data_summary(run.tables.report),
        }
        metrics = {**run.fit.best_metrics, "export_parity_max_abs_diff": diff}
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = Manifest(
            model_kind=cfg.model,
            task="next_item",
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
        set_metadata(tmp / MODEL, {"recsys.manifest": manifest.to_json()})
        reports = write_report(tmp, training, metrics, (f"ndcg@{cfg.k}", f"hr@{cfg.k}"))
        box["m"] = seal_manifest(
            tmp, manifest, (MODEL, USER_TOWER, ITEM_EMBEDDINGS, ITEM_INDEX, *TABLE_FILES, *reports)
        )

    write_atomically(out_dir, fill)
    return box["m"]


def train_and_export_two_tower(
    cfg: RetrievalConfig, interactions: str | Path | None, out_dir: str | Path, **options
) -> Manifest | None:
    """`recsys train --model two_tower`: tables -> pairs -> fit -> artifact.
    `options` as for trainer/export/ranker.py train_then_export."""
    return train_then_export(train_two_tower, export_two_tower, cfg, interactions, out_dir, **options)
