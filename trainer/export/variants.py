"""Cheaper variants of an exported model, each with its quality change measured at export.

- int8: dynamic quantisation of the weights (ONNX Runtime `quantize_dynamic`, QInt8; MatMul
  and Gemm weights become int8, activations are quantised per run). Written as
  `model.int8.onnx`; the server runs it with `--variant int8`.

fp16 is a CUDA variant and needs a converter this environment lacks (onnxconverter-common);
it is not made here.

Quality change, measured on random left-padded histories against the float32 model: the mean
overlap of the top-10 items and the largest absolute score difference, written to
`variants.json` beside the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from recsys.schema import FIRST_TOKEN, PAD

__all__ = ["INT8_MODEL", "VARIANTS", "export_int8"]

INT8_MODEL = "model.int8.onnx"
VARIANTS = "variants.json"


def export_int8(
    directory: Path, model_file: str, max_len: int, num_items: int, *, queries: int = 200, seed: int = 0
) -> list[str]:
    """Writes model.int8.onnx and variants.json into `directory`; returns their names."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("root").setLevel(logging.ERROR)  # quantize_dynamic's pre-processing advice
    quantize_dynamic(str(directory / model_file), str(directory / INT8_MODEL), weight_type=QuantType.QInt8)
    rng = np.random.default_rng(seed)
    x = rng.integers(FIRST_TOKEN, num_items + FIRST_TOKEN, (queries, max_len), dtype=np.int64)
    lengths = rng.integers(1, max_len + 1, queries)
    x[np.arange(max_len)[None, :] < (max_len - lengths)[:, None]] = PAD
    outs = []
    for name in (model_file, INT8_MODEL):
        session = ort.InferenceSession(str(directory / name), providers=["CPUExecutionProvider"])
        outs.append(np.concatenate([session.run(None, {"item_seq": x[i : i + 32]})[0] for i in range(0, queries, 32)]))
    full, int8 = outs
    k = min(10, num_items)
    top = lambda s: np.argpartition(-s, k - 1, axis=1)[:, :k]  # noqa: E731
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top(full).tolist(), top(int8).tolist())])
    quality = {
        "int8": {
            "file": INT8_MODEL,
            "top10_overlap_vs_fp32": round(float(overlap), 4),
            "max_abs_score_diff": round(float(np.abs(full - int8).max()), 5),
            "bytes": (directory / INT8_MODEL).stat().st_size,
            "fp32_bytes": (directory / model_file).stat().st_size,
        }
    }
    (directory / VARIANTS).write_text(json.dumps(quality, indent=2))
    return [INT8_MODEL, VARIANTS]
