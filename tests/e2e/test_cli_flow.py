"""The whole flow through the real `recsys` command: train -> export -> serve both -> recommend
-> evaluate -> SIGTERM. Small generated data; seconds, not minutes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from recsys.v1 import inference_pb2, inference_pb2_grpc

RECSYS = [sys.executable, "-m", "recsys.cli"]


@pytest.mark.slow
def test_train_serve_recommend_evaluate(ring_data, tmp_path: Path, served_by_cli):
    artifact = tmp_path / "artifact"
    config = tmp_path / "train.toml"
    config.write_text(
        "epochs = 20\nbatch_size = 32\nmax_len = 10\nhidden = 32\nlayers = 1\ninner = 64\n"
        "dropout = 0.1\nlr = 0.005\neval_every = 5\n"
    )
    subprocess.run(
        [
            *RECSYS,
            "train",
            "--interactions",
            str(ring_data["train"]),
            "--items",
            str(ring_data["items"]),
            "--users",
            str(ring_data["users"]),
            "--model",
            "sasrec",
            "--out",
            str(artifact),
            "--config",
            str(config),
            "--seed",
            "1",
            "--quiet",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["training"]["config"]["seed"] == 1 and manifest["training"]["config"]["epochs"] == 20
    assert {"report.json", "curves.png"} <= set(manifest["files"])  # the run report travels with the model

    with served_by_cli(artifact, tmp_path) as servers:
        target = servers["target"]
        out = subprocess.run(
            [*RECSYS, "recommend", "--server", target, "--user", "u003", "--k", "5"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert "from model" in out and out.count("Movie ") == 5

        with grpc.insecure_channel(target) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            top = stub.Recommend(inference_pb2.RecommendRequest(user_id="u003", k=3, exclude_seen=True), timeout=5)
            scored = stub.Score(
                inference_pb2.ScoreRequest(user_id="u003", item_ids=[i.item_id for i in top.items]), timeout=5
            )
            assert scored.scores == pytest.approx([i.score for i in top.items], abs=1e-6)

        result = subprocess.run(
            [*RECSYS, "evaluate", "--artifact", str(artifact), "--test", str(ring_data["test"]), "--k", "10", "--json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        metrics = json.loads(result.strip().splitlines()[-1])
        assert metrics["users"] == 80 and metrics["hr@10"] > 0.5  # random ranking would give ~0.27
    assert servers["returncodes"] == [0, 0], servers["logs"]
    assert "listening" in servers["logs"][0]
