"""Export: ONNX parity with torch, a self-describing artifact, refusal to write a bad one."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from recsys.artifact import ItemIndex, read_manifest, verify_files
from recsys.schema import FIRST_TOKEN, PAD, FeatureSchema
from trainer.export import onnx as export_module
from trainer.export.next_item import ExportError, ExportInputs, export_artifact
from trainer.families.next_item import TrainConfig
from trainer.models import MODELS


def small_model(name="sasrec", num_items=25, max_len=12):
    torch.manual_seed(0)
    return MODELS[name][1](TrainConfig(model=name, max_len=max_len, hidden=16).model_config(num_items)).eval()


def inputs(num_items=25, max_len=12):
    ids = tuple(f"i{i}" for i in range(num_items))
    index = ItemIndex(ids, tuple(f"Title {i}" for i in range(num_items)), tuple(range(num_items, 0, -1)))
    return ExportInputs(
        model_kind="sasrec",
        max_len=max_len,
        item_index=index,
        schema=FeatureSchema(max_history=max_len, item_index_sha256=index.sha256),
        histories=[{"user_id": "u1", "item_ids": ["i1", "i2"], "timestamps": [1, 2]}],
        users=[],
        items=[{"item_id": "i1", "features": {"title": "Title 1"}}],
        training={"config": {"seed": 0}},
        metrics={"valid_ndcg@10": 0.5},
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_artifact_describes_itself_and_matches_torch(tmp_path, name):
    model = small_model(name)
    manifest = export_artifact(model, inputs(), tmp_path / "a")
    assert manifest.metrics["export_parity_max_abs_diff"] <= 1e-4
    loaded = read_manifest(tmp_path / "a")
    verify_files(tmp_path / "a", loaded)
    assert loaded.model_version == manifest.model_version and loaded.num_items == 25
    assert loaded.inputs[0].source == "user.history" and loaded.schema_hash == manifest.schema.hash

    proto = onnx.load(str(tmp_path / "a" / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["recsys.manifest"])["schema_hash"] == manifest.schema_hash

    # dynamic batch and sequence axes: other shapes than the export example run and agree
    session = ort.InferenceSession(str(tmp_path / "a" / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, length in [(1, 3), (7, 12), (2, 1)]:
        x = np.random.default_rng(batch).integers(FIRST_TOKEN, 25 + FIRST_TOKEN, (batch, length))
        x[0, : length - 1] = PAD
        got = session.run(["scores"], {"item_seq": x})[0]
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert np.abs(got - expected).max() <= 1e-4


def test_export_refuses_on_parity_failure_and_leaves_no_artifact(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="max abs difference"):
        export_artifact(small_model(), inputs(), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    assert list(tmp_path.iterdir()) == []
