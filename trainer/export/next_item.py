"""Export: a trained model plus its tables -> a self-describing artifact directory.

The ONNX graph takes `item_seq` (batch, seq) int64 tokens, left-padded, and returns `scores`
(batch, num_items) float32 in item-index order. A model that reads event kinds also takes
`history_events` (batch, seq) int64, the event-kind token of each position of `item_seq`
(source user.history_events), and the manifest's `training["events"]` lists its kinds in token
order (kind i is token i + FIRST_TOKEN; any other kind OOV). Export checks torch against ONNX Runtime on
padded and unpadded inputs and refuses to write an artifact whose outputs differ by more than
`PARITY_TOLERANCE`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from recsys.artifact import (
    HISTORIES,
    ITEM_INDEX,
    ITEMS,
    MODEL,
    SOURCE_USER_HISTORY,
    SOURCE_USER_HISTORY_EVENTS,
    USERS,
    ItemIndex,
    Manifest,
    ModelInput,
    write_atomically,
    write_jsonl,
)
from recsys.schema import FeatureSchema
from trainer.export.ann import DEFAULT_BACKEND, export_ann, wants_ann
from trainer.export.onnx import ExportError, export_onnx, parity_check, seal_manifest, set_metadata, versions
from trainer.export.report import write_report

__all__ = ["ExportError", "ExportInputs", "export_artifact"]


@dataclass
class ExportInputs:
    """Everything besides the model that goes into an artifact."""

    model_kind: str
    max_len: int
    item_index: ItemIndex
    schema: FeatureSchema
    histories: Iterable[dict[str, Any]]  # {"user_id", "item_ids", "timestamps"[, "events": kinds, str]}
    users: Iterable[dict[str, Any]]  # {"user_id", "features"}
    items: Iterable[dict[str, Any]]  # {"item_id", "features"}
    training: dict[str, Any]
    metrics: dict[str, Any]
    privacy: dict[str, Any] = field(
        default_factory=dict
    )  # DP training: (epsilon, delta) spent, see trainer/families/private.py
    events: tuple[str, ...] = ()  # the event kinds the model reads, in token order (FitResult.settings["events"])


def export_artifact(
    model: nn.Module,
    inputs: ExportInputs,
    out_dir: str | Path,
    *,
    ann: str = "auto",
    ann_backend: str | None = None,
    int8: bool = False,
    ann_options: dict | None = None,
) -> Manifest:
    """Writes the artifact directory atomically and returns its manifest.

    `ann` (auto | on | off) adds ANN retrieval files (trainer/export/ann.py: from 100k items up
    with auto) built with `ann_backend` (default trainer.export.ann.DEFAULT_BACKEND) and `ann_options`
    (export_ann's params / windows / target_recall); `int8` adds
    the dynamically quantised model.int8.onnx and its measured quality (trainer/export/variants.py).

    A model may offer `export_view()`: an equivalent module that is cheaper to serve (e.g. with
    its item table folded into a constant); that view is exported and parity-checked.

    A model reading event kinds (`cfg.num_events` > 0) needs their vocabulary in
    `inputs.events`; it gets no ANN files (the user encoder reads items only: `ann` "on" is
    an ExportError, "auto" builds none) and no int8 variant (ExportError).
    """
    num_events = int(getattr(getattr(model, "cfg", None), "num_events", 0) or 0)
    kinds = tuple(inputs.events) if num_events else ()
    if num_events:
        if len(kinds) != num_events:
            raise ExportError(
                f"the model reads {num_events} event kinds; ExportInputs.events names {len(inputs.events)}: "
                "give the kinds in token order (FitResult.settings['events'])"
            )
        if ann == "on":
            raise ExportError("ANN retrieval cannot read event kinds: export a model that reads kinds with ann = off")
        if int8:
            raise ExportError("the int8 variant is not available for a model that reads event kinds: set int8 = false")
        wants_ann(ann, 0)  # ValueError for an unknown mode, as without kinds
        ann = "off"
    if hasattr(model, "export_view"):
        model = model.export_view()
    num_items = len(inputs.item_index.item_ids)
    manifest_box: dict[str, Manifest] = {}

    def fill(tmp: Path) -> None:
        onnx_path = tmp / MODEL
        export_onnx(model, onnx_path, inputs.max_len, num_items, num_events=num_events)
        max_diff = parity_check(model, onnx_path, inputs.max_len, num_items, num_events=num_events)
        ann_files = export_ann(
            model,
            tmp,
            inputs.max_len,
            num_items,
            mode=ann,
            backend=ann_backend or DEFAULT_BACKEND,
            **(ann_options or {}),
        )
        if int8:
            from trainer.export.variants import export_int8

            ann_files += export_int8(tmp, MODEL, inputs.max_len, num_items)
        (tmp / ITEM_INDEX).write_text(json.dumps(inputs.item_index.to_dict(), ensure_ascii=False))
        counts = {
            "histories": write_jsonl(tmp / HISTORIES, inputs.histories),
            "users": write_jsonl(tmp / USERS, inputs.users),
            "items": write_jsonl(tmp / ITEMS, inputs.items),
        }
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = Manifest(
            model_kind=inputs.model_kind,
            task="next_item",
            model_version="",
            inputs=(ModelInput("item_seq", SOURCE_USER_HISTORY, "int64", ("batch", "seq")),)
            + ((ModelInput("history_events", SOURCE_USER_HISTORY_EVENTS, "int64", ("batch", "seq")),) if kinds else ()),
            output="scores",
            num_items=num_items,
            schema=inputs.schema,
            item_index_sha256=inputs.item_index.sha256,
            training={**inputs.training, "artifact_rows": counts, **({"events": list(kinds)} if kinds else {})},
            metrics={**inputs.metrics, "export_parity_max_abs_diff": max_diff},
            privacy=dict(inputs.privacy),
            versions=versions(),
            created_at=created,
        )
        # The manifest rides inside the model too, so model.onnx alone still describes itself.
        set_metadata(onnx_path, {"recsys.manifest": manifest.to_json()})
        reports = write_report(tmp, inputs.training, manifest.metrics) if inputs.training.get("history") else []
        manifest_box["m"] = seal_manifest(
            tmp, manifest, (MODEL, ITEM_INDEX, HISTORIES, USERS, ITEMS, *reports, *ann_files)
        )

    write_atomically(out_dir, fill)
    return manifest_box["m"]
