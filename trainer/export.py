"""Export: a trained model plus its tables -> a self-describing artifact directory.

The ONNX graph takes `item_seq` (batch, seq) int64 tokens, left-padded, and returns `scores`
(batch, num_items) float32 in item-index order. Export checks torch against ONNX Runtime on
padded and unpadded inputs and refuses to write an artifact whose outputs differ by more than
`PARITY_TOLERANCE`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import recsys
from recsys.artifact import (
    HISTORIES,
    ITEM_INDEX,
    ITEMS,
    MANIFEST,
    MODEL,
    SOURCE_USER_HISTORY,
    USERS,
    ItemIndex,
    Manifest,
    ModelInput,
    file_sha256,
    write_atomically,
    write_jsonl,
)
from recsys.schema import FIRST_TOKEN, PAD, FeatureSchema, sha256_hex
from trainer.report import write_report

__all__ = [
    "PARITY_TOLERANCE", "ExportError", "ExportInputs", "compare_with_onnx", "export_artifact", "export_onnx", "parity_check", "set_metadata",
    "versions",
]

PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    pass


@dataclass
class ExportInputs:
    """Everything besides the model that goes into an artifact."""

    model_kind: str
    max_len: int
    item_index: ItemIndex
    schema: FeatureSchema
    histories: Iterable[dict[str, Any]]  # {"user_id", "item_ids", "timestamps"}
    users: Iterable[dict[str, Any]]  # {"user_id", "features"}
    items: Iterable[dict[str, Any]]  # {"item_id", "features"}
    training: dict[str, Any]
    metrics: dict[str, Any]
    privacy: dict[str, Any] = field(default_factory=dict)  # DP training: (epsilon, delta) spent, see trainer/private.py


def export_onnx(model: nn.Module, path: Path, max_len: int, num_items: int, output_name: str = "scores") -> None:
    """Writes `model` as one ONNX file with dynamic batch and sequence axes."""
    model.eval()
    # Example dims >= 2 and different from each other, else the exporter specialises them.
    example = torch.randint(FIRST_TOKEN, num_items + FIRST_TOKEN, (4, max_len), dtype=torch.int64)
    example[0, : max_len // 2] = PAD
    batch = torch.export.Dim("batch", min=1, max=65536)
    seq = torch.export.Dim("seq", min=1, max=max_len)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and similar exporter chatter
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # deprecations raised inside torch.onnx itself
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["item_seq"],
            output_names=[output_name],
            dynamic_shapes={"item_seq": {0: batch, 1: seq}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    quiet.setLevel(level)


def compare_with_onnx(module: nn.Module, onnx_path: Path, output: str, inputs: list[dict[str, torch.Tensor]]) -> float:
    """Max |torch - ORT| of `output` over the input dicts (name -> tensor), `module` called with
    them as keywords; raises ExportError on a shape mismatch or above PARITY_TOLERANCE."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    module.eval()
    with torch.no_grad():
        for x in inputs:
            expected = module(**x).numpy()
            got = session.run([output], {k: v.numpy() for k, v in x.items()})[0]
            if got.shape != expected.shape:
                shapes = {k: tuple(v.shape) for k, v in x.items()}
                raise ExportError(f"ONNX output shape {got.shape} != torch {expected.shape} for inputs {shapes}")
            worst = max(worst, float(np.abs(got - expected).max()))
    if not worst <= PARITY_TOLERANCE:
        raise ExportError(f"torch vs ONNX Runtime max abs difference {worst:.2e} exceeds {PARITY_TOLERANCE:.0e}")
    return worst


def parity_check(model: nn.Module, onnx_path: Path, max_len: int, num_items: int, seed: int = 0) -> float:
    """Max |torch - ORT| over padded, unpadded, short and batch-1 inputs; raises above tolerance."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for batch, length, pad in [(1, max_len, 0), (8, max_len, max_len - 3), (5, max(1, max_len // 3), 2), (3, max_len, 0)]:
        x = torch.randint(FIRST_TOKEN, num_items + FIRST_TOKEN, (batch, length), generator=gen)
        x[:, : min(pad, length - 1)] = PAD
        cases.append({"item_seq": x})
    return compare_with_onnx(model, onnx_path, "scores", cases)


def set_metadata(onnx_path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(onnx_path))


def export_artifact(model: nn.Module, inputs: ExportInputs, out_dir: str | Path, *, ann: str = "auto",
                    ann_backend: str | None = None, int8: bool = False, ann_options: dict | None = None) -> Manifest:
    """Writes the artifact directory atomically and returns its manifest.

    `ann` (auto | on | off) adds ANN retrieval files (trainer/ann_export.py: from 100k items up
    with auto) built with `ann_backend` (default trainer.ann_export.DEFAULT_BACKEND) and `ann_options`
    (export_ann's params / windows / target_recall); `int8` adds
    the dynamically quantised model.int8.onnx and its measured quality (trainer/variants.py).

    A model may offer `export_view()`: an equivalent module that is cheaper to serve (e.g. with
    its item table folded into a constant); that view is exported and parity-checked.
    """
    if hasattr(model, "export_view"):
        model = model.export_view()
    num_items = len(inputs.item_index.item_ids)
    manifest_box: dict[str, Manifest] = {}

    def fill(tmp: Path) -> None:
        onnx_path = tmp / MODEL
        export_onnx(model, onnx_path, inputs.max_len, num_items)
        max_diff = parity_check(model, onnx_path, inputs.max_len, num_items)
        from trainer.ann_export import DEFAULT_BACKEND, export_ann

        ann_files = export_ann(model, tmp, inputs.max_len, num_items, mode=ann, backend=ann_backend or DEFAULT_BACKEND,
                               **(ann_options or {}))
        if int8:
            from trainer.variants import export_int8

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
            inputs=(ModelInput("item_seq", SOURCE_USER_HISTORY, "int64", ("batch", "seq")),),
            output="scores",
            num_items=num_items,
            schema=inputs.schema,
            item_index_sha256=inputs.item_index.sha256,
            training={**inputs.training, "artifact_rows": counts},
            metrics={**inputs.metrics, "export_parity_max_abs_diff": max_diff},
            privacy=dict(inputs.privacy),
            versions=versions(),
            created_at=created,
        )
        # The manifest rides inside the model too, so model.onnx alone still describes itself.
        set_metadata(onnx_path, {"recsys.manifest": manifest.to_json()})
        reports = write_report(tmp, inputs.training, manifest.metrics) if inputs.training.get("history") else []
        manifest_box["m"] = seal_manifest(tmp, manifest, (MODEL, ITEM_INDEX, HISTORIES, USERS, ITEMS, *reports, *ann_files))

    write_atomically(out_dir, fill)
    return manifest_box["m"]


def seal_manifest(directory: Path, manifest: Manifest, names) -> Manifest:
    """The last step of every export: checksums the files `names` in `directory`, names the
    version `<model kind>-<created, compact>-<model.onnx sha256[:8]>`, writes manifest.json and
    returns the manifest as written."""
    files = {name: file_sha256(directory / name) for name in names}
    stamp = manifest.created_at.replace(":", "").replace("-", "")
    version = f"{manifest.model_kind}-{stamp}-{sha256_hex(files[MODEL])[:8]}"
    sealed = Manifest(**{**manifest.__dict__, "model_version": version, "files": files})
    (directory / MANIFEST).write_text(sealed.to_json())
    return sealed


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "recsys": recsys.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
