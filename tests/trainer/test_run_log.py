"""Training runs logged where teams look: TensorBoard event files with the numbers report.json holds."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from recsys.cli import main


def test_tensorboard_gets_loss_and_validation_per_epoch(ring_data, tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "tb"
    args = ["train", "--interactions", str(ring_data["train"]), "--out", str(tmp_path / "a"), "--epochs", "3"]
    result = CliRunner().invoke(main, [*args, "--tensorboard", str(board), "--quiet"])
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(board))
    events.Reload()
    report = json.loads((tmp_path / "a" / "report.json").read_text())["training"]["history"]
    assert [e.step for e in events.Scalars("loss")] == [row["epoch"] for row in report]
    assert [round(e.value, 5) for e in events.Scalars("loss")] == [round(row["loss"], 5) for row in report]
    validated = [row for row in report if "ndcg@10" in row]
    assert [e.step for e in events.Scalars("ndcg@10")] == [row["epoch"] for row in validated] and validated
