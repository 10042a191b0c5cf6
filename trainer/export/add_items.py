"""Adding new items to a trained content model (content_sasrec) by re-export: no retraining."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from recsys.artifact import HISTORIES, ITEMS, USERS, ItemIndex, read_jsonl, read_manifest
from recsys.schema import FIRST_TOKEN
from trainer.data.tables import feature_rows, read_table
from trainer.export.next_item import ExportInputs, export_artifact
from trainer.families.content import (
    CONTENT_CHECKPOINT,
    load_content_model,
    read_item_vectors,
    save_content_model,
    with_catalogue,
)
from trainer.models.content import ContentSASRec

__all__ = ["add_items"]


def add_items(
    artifact_dir: str | Path,
    items: str | Path,
    out_dir: str | Path,
    *,
    content_checkpoint: str | Path | None = None,
    item_vectors: str | Path | None = None,
):
    """Re-exports a content model's artifact with the items of table `items` it lacks.

    New items are appended after the existing columns (popularity 0, no id embedding: content
    only); existing items keep their columns and vectors, so nothing is retrained. Feature rows
    in `items` also update existing items' content. The content checkpoint defaults to
    `<artifact>.ckpt/content_model.pt`; an updated one is written to `<out>.ckpt/`. Returns
    the new manifest. The feature service must load the new artifact too (its schema carries
    the new item index checksum).
    """
    artifact_dir, out_dir = Path(artifact_dir), Path(out_dir)
    manifest = read_manifest(artifact_dir)
    ckpt = Path(content_checkpoint or artifact_dir.with_name(artifact_dir.name + ".ckpt") / CONTENT_CHECKPOINT)
    if not ckpt.is_file():
        raise ValueError(f"{ckpt}: no content model checkpoint (only content models trained here can add items)")
    model, spec, trained_ids = load_content_model(ckpt)
    index = ItemIndex.read(artifact_dir)
    if index.item_ids != trained_ids:
        raise ValueError(f"{ckpt} does not belong to {artifact_dir}: the item ids differ")
    table = read_table(items, "items").drop_duplicates("item_id", keep="last")
    rows = {r["item_id"]: r["features"] for r in read_jsonl(artifact_dir / ITEMS)}
    rows.update({r["item_id"]: r["features"] for r in feature_rows(table, manifest.schema.item_features, "item_id")})
    vectors = read_item_vectors(item_vectors) if item_vectors else None
    if vectors and len(next(iter(vectors.values()))) != spec.source_dim:
        raise ValueError(f"{item_vectors}: vectors must have {spec.source_dim} components, as in training")
    new_index = with_catalogue(index, table)
    n_old, n_new = len(index.item_ids), len(new_index.item_ids)
    known = np.zeros(n_new, dtype=bool)
    known[:n_old] = model.item_emb.known[FIRST_TOKEN:, 0].numpy() > 0
    content = spec.encode(new_index.item_ids, rows, vectors, known)
    grown = ContentSASRec(dataclasses.replace(model.content_cfg, num_items=n_new))
    state = model.state_dict()
    id_rows = torch.zeros(n_new + FIRST_TOKEN, state["item_emb.id_emb.weight"].shape[1])
    id_rows[: n_old + FIRST_TOKEN] = state["item_emb.id_emb.weight"]
    state["item_emb.id_emb.weight"] = id_rows
    for name, value in zip(("attrs", "words", "vectors", "known"), content.tensors(), strict=True):
        state[f"item_emb.{name}"] = value
    grown.load_state_dict(state)
    grown.eval()
    added = new_index.item_ids[n_old:]
    new_manifest = export_artifact(
        grown,
        ExportInputs(
            model_kind=manifest.model_kind,
            max_len=manifest.max_history,
            item_index=new_index,
            schema=dataclasses.replace(manifest.schema, item_index_sha256=new_index.sha256),
            histories=read_jsonl(artifact_dir / HISTORIES),
            users=read_jsonl(artifact_dir / USERS),
            items=({"item_id": i, "features": rows[i]} for i in new_index.item_ids if i in rows),
            training={**manifest.training, "added_items": {"count": len(added), "from": manifest.model_version}},
            metrics={k: v for k, v in manifest.metrics.items() if k != "export_parity_max_abs_diff"},
        ),
        out_dir,
    )
    save_content_model(out_dir.with_name(out_dir.name + ".ckpt") / CONTENT_CHECKPOINT, grown, spec, new_index.item_ids)
    return new_manifest
