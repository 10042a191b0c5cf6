"""The classic baselines through the public CLI: train -> export -> serve -> Recommend and Score,
with exclude_seen and explanations, like every other next-item model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from recsys.v1 import inference_pb2, inference_pb2_grpc

RECSYS = [sys.executable, "-m", "recsys.cli"]


def train(data: dict[str, Path], model: str, out: Path, config: str = "") -> dict:
    config_file = out.with_suffix(".toml")
    config_file.write_text("max_len = 10\n" + config)
    command = [*RECSYS, "train", "--interactions", str(data["train"]), "--model", model, "--out", str(out)]
    subprocess.run([*command, "--config", str(config_file), "--quiet"], check=True, capture_output=True, text=True)
    return json.loads((out / "manifest.json").read_text())


def history_of(path: Path, user: str) -> set[str]:
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return {row[1] for row in rows if row[0] == user}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "config"),
    [
        ("pop", ""),
        ("itemknn", ""),
        ("ease", ""),
        ("bpr_mf", 'epochs = 3\nbatch_size = 32\nhidden = 16\noptimizer = "sgd"\nmomentum = 0.0\nlr = 0.05\n'),
    ],
)
def test_trains_serves_recommends_and_scores(ring_data, tmp_path: Path, served_by_cli, model, config):
    artifact = tmp_path / model
    manifest = train(ring_data, model, artifact, config)
    assert manifest["model_kind"] == model and manifest["task"] == "next_item"
    assert manifest["metrics"]["export_parity_max_abs_diff"] < 1e-4
    with served_by_cli(artifact, tmp_path) as servers, grpc.insecure_channel(servers["target"]) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        reply = stub.Recommend(
            inference_pb2.RecommendRequest(user_id="u003", k=5, exclude_seen=True, explain=True), timeout=10
        )
        ids = [i.item_id for i in reply.items]
        scored = stub.Score(inference_pb2.ScoreRequest(user_id="u003", item_ids=ids), timeout=10)
    assert len(ids) == 5 and len(set(ids)) == 5
    assert not set(ids) & history_of(ring_data["train"], "u003")  # exclude_seen
    assert reply.model_version == manifest["model_version"]
    assert list(scored.scores) == pytest.approx([i.score for i in reply.items], abs=1e-4)
    if model in ("itemknn", "ease"):  # the score is a sum over history items: each one explains it
        assert reply.items[0].because_items
    assert servers["returncodes"] == [0, 0], servers["logs"]
