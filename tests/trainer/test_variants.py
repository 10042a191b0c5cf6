"""int8 variant: written beside the model, its quality change measured, and served by --variant int8."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from inference_server.speed import SpeedOptions, open_model
from recsys.artifact import read_manifest
from recsys.errors import FailedPrecondition
from trainer.export.variants import INT8_MODEL, VARIANTS, export_int8


def test_int8_variant_is_measured_and_served(trained_artifact, tmp_path):
    artifact = tmp_path / "a"
    shutil.copytree(trained_artifact, artifact)
    manifest = read_manifest(artifact)
    assert export_int8(artifact, "model.onnx", manifest.max_history, manifest.num_items) == [INT8_MODEL, VARIANTS]
    quality = json.loads((artifact / VARIANTS).read_text())["int8"]
    assert 0.5 <= quality["top10_overlap_vs_fp32"] <= 1.0 and quality["max_abs_score_diff"] >= 0
    assert quality["bytes"] < quality["fp32_bytes"]
    fp32, _ = open_model(artifact, manifest, device="cpu", threads=1)
    int8, _ = open_model(artifact, manifest, device="cpu", threads=1, speed=SpeedOptions(variant="int8"))
    window = np.arange(1, manifest.max_history + 1, dtype=np.int64)[None, :] % manifest.num_items + 1
    a, b = fp32.scores(window), int8.scores(window)
    assert a.shape == b.shape == (1, manifest.num_items)
    assert np.abs(a - b).max() <= max(1.0, 4 * quality["max_abs_score_diff"])
    with pytest.raises(FailedPrecondition, match="variant"):
        open_model(artifact, manifest, device="cpu", threads=1, speed=SpeedOptions(variant="fp8"))
