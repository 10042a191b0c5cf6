"""ONNX steps every export shares: writing a graph, checking it against torch, metadata, the
sealed manifest. Export modules per family (next_item, ranker, two_tower, ann) build on these."""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import recsys
from recsys.artifact import MANIFEST, MODEL, Manifest, file_sha256
from recsys.errors import RecsysError
from recsys.schema import FIRST_TOKEN, OOV, PAD, sha256_hex

__all__ = [
    "PARITY_TOLERANCE",
    "ExportError",
    "compare_with_onnx",
    "export_onnx",
    "parity_check",
    "random_events",
    "seal_manifest",
    "set_metadata",
    "versions",
]

PARITY_TOLERANCE = 1e-4


class ExportError(RecsysError):
    pass


def export_onnx(
    model: nn.Module, path: Path, max_len: int, num_items: int, output_name: str = "scores", num_events: int = 0
) -> None:
    """Writes `model` as one ONNX file with dynamic batch and sequence axes. `num_events` > 0:
    the model reads event kinds, and the graph takes `history_events` (batch, seq) int64
    beside `item_seq`, both sharing their axes."""
    model.eval()
    # Example dims >= 2 and different from each other, else the exporter specialises them.
    example = torch.randint(FIRST_TOKEN, num_items + FIRST_TOKEN, (4, max_len), dtype=torch.int64)
    example[0, : max_len // 2] = PAD
    batch = torch.export.Dim("batch", min=1, max=65536)
    seq = torch.export.Dim("seq", min=1, max=max_len)
    args, names, shapes = (example,), ["item_seq"], {"item_seq": {0: batch, 1: seq}}
    if num_events:
        args += (random_events(example, num_events, torch.Generator().manual_seed(0)),)
        names.append("history_events")
        shapes["history_events"] = {0: batch, 1: seq}
    export_quietly(model, path, args, {}, names, output_name, shapes)


def export_quietly(
    module: nn.Module,
    path: Path,
    args: tuple,
    kwargs: dict[str, torch.Tensor],
    input_names: list[str],
    output: str,
    dynamic_shapes: dict,
) -> None:
    """torch.onnx.export (dynamo, one file) of `module` called with `args` and `kwargs`, without
    the exporter's chatter on stdout and its warnings."""
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and similar exporter chatter
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # deprecations raised inside torch.onnx itself
            torch.onnx.export(
                module,
                args,
                str(path),
                kwargs=kwargs or None,
                input_names=input_names,
                output_names=[output],
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
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


def random_events(item_seq: torch.Tensor, num_events: int, generator: torch.Generator) -> torch.Tensor:
    """Event-kind tokens for `item_seq`: OOV or a known kind at random, PAD where it is padded."""
    kinds = torch.randint(OOV, num_events + FIRST_TOKEN, item_seq.shape, generator=generator)
    return kinds.masked_fill(item_seq == PAD, PAD)


def parity_check(
    model: nn.Module, onnx_path: Path, max_len: int, num_items: int, seed: int = 0, num_events: int = 0
) -> float:
    """Max |torch - ORT| over padded, unpadded, short and batch-1 inputs (with random event
    kinds when the model reads `num_events` of them); raises above tolerance."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for batch, length, pad in [
        (1, max_len, 0),
        (8, max_len, max_len - 3),
        (5, max(1, max_len // 3), 2),
        (3, max_len, 0),
    ]:
        x = torch.randint(FIRST_TOKEN, num_items + FIRST_TOKEN, (batch, length), generator=gen)
        x[:, : min(pad, length - 1)] = PAD
        cases.append({"item_seq": x})
        if num_events:
            cases[-1]["history_events"] = random_events(x, num_events, gen)
    return compare_with_onnx(model, onnx_path, "scores", cases)


def set_metadata(onnx_path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(onnx_path))


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
