"""Your own model through the public CLI only: train -> export -> serve -> Recommend (the
next-item example), and train -> export -> evaluate (the ranker example)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from recsys.v1 import inference_pb2, inference_pb2_grpc

RECSYS = [sys.executable, "-m", "recsys.cli"]
ROOT = Path(__file__).resolve().parents[2]
HISTORY_BAG = f"{ROOT}/examples/custom_model/history_bag.py:HistoryBag"
FIELD_MLP = f"{ROOT}/examples/custom_model/field_mlp.py:FieldMLP"


def train(data: dict[str, Path], model: str, out: Path, config: str) -> dict:
    config_file = out.with_suffix(".toml")
    config_file.write_text(config)
    subprocess.run(
        [
            *RECSYS,
            "train",
            "--interactions",
            str(data["train"]),
            "--items",
            str(data["items"]),
            "--users",
            str(data["users"]),
            "--model",
            model,
            "--out",
            str(out),
            "--config",
            str(config_file),
            "--quiet",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.slow
def test_own_next_item_model_trains_serves_and_recommends(ring_data, tmp_path: Path, served_by_cli):
    artifact = tmp_path / "bag"
    manifest = train(
        ring_data, HISTORY_BAG, artifact, "epochs = 1\nbatch_size = 32\nmax_len = 10\n[model_options]\ndim = 16\n"
    )
    assert manifest["model_kind"] == "historybag" and manifest["task"] == "next_item"
    assert manifest["training"]["config"]["model_options"] == {"dim": 16}

    with served_by_cli(artifact, tmp_path) as servers, grpc.insecure_channel(servers["target"]) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        reply = stub.Recommend(inference_pb2.RecommendRequest(user_id="u003", k=5, exclude_seen=True), timeout=10)
    assert len(reply.items) == 5 and len({i.item_id for i in reply.items}) == 5
    assert reply.model_version == manifest["model_version"]
    assert servers["returncodes"] == [0, 0], servers["logs"]


@pytest.mark.slow
def test_own_ranker_trains_exports_and_evaluates(ring_data, tmp_path: Path):
    artifact = tmp_path / "mlp"
    manifest = train(
        ring_data,
        FIELD_MLP,
        artifact,
        'epochs = 2\nbatch_size = 64\nlabel = "implicit"\n[model_options]\nhidden = 16\n',
    )
    assert manifest["model_kind"] == "fieldmlp" and manifest["task"] == "rank"
    assert set(manifest["metrics"]) >= {"valid_auc", "test_auc", "test_logloss"}
    assert manifest["metrics"]["export_parity_max_abs_diff"] < 1e-4  # the ONNX graph matches torch

    result = subprocess.run(
        [*RECSYS, "evaluate", "--artifact", str(artifact), "--test", str(ring_data["test"]), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    metrics = json.loads(result.strip().splitlines()[-1])
    assert metrics["model_kind"] == "fieldmlp" and metrics["task"] == "rank"
    assert metrics["users"] == 80 and 0.0 <= metrics["ndcg@10"] <= metrics["hr@10"] <= 1.0


def test_a_class_without_the_contract_is_refused_with_what_is_missing(ring_data, tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("from torch import nn\nclass OnlyForward(nn.Module):\n    def forward(self, x):\n        return x\n")
    result = subprocess.run(
        [
            *RECSYS,
            "train",
            "--interactions",
            str(ring_data["train"]),
            "--model",
            f"{bad}:OnlyForward",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "needs method(s) encode, score" in result.stderr
    assert not (tmp_path / "out").exists()
