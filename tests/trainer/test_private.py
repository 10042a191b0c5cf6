"""DP-SGD training through Opacus: per-user gradients for every parameter, the privacy spent in
the manifest, and train -> export -> serve end to end."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from recsys.artifact import read_manifest
from trainer.families.next_item import TrainConfig
from trainer.families.private import (
    PrivacyConfig,
    UntiedNextItem,
    fit_private,
    per_user_loss,
    user_windows,
)
from trainer.models import MODELS

pytest.importorskip("opacus")


def test_opacus_computes_a_per_user_gradient_for_every_sasrec_parameter():
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    cfg = TrainConfig(max_len=6, hidden=16, inner=32)
    net = UntiedNextItem(MODELS["sasrec"][1](cfg.model_config(20)), 20, 16)
    assert ModuleValidator.validate(net, strict=False) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(net)
        rng = np.random.default_rng(0)
        seqs = [rng.integers(2, 22, n) for n in (3, 9, 12, 5)]
        inputs, targets = user_windows(seqs, np.arange(4), 6, rng)
        per_user_loss(gsm._module, inputs, targets).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad_sample is not None and p.grad_sample.shape == (4, *p.shape), name
        # the per-user gradients add up to the batch gradient (mean loss: scaled by the batch)
        torch.testing.assert_close(p.grad_sample.sum(0) / 4, p.grad, atol=1e-5, rtol=1e-4)


def test_user_windows_take_one_window_per_user_from_the_training_sequence():
    rng = np.random.default_rng(0)
    seqs = [np.arange(2, 5), np.arange(2, 40)]
    inputs, targets = user_windows(seqs, np.array([0, 1]), 8, rng)
    assert inputs[0].tolist() == [0] * 6 + [2, 3] and targets[0].tolist() == [0] * 6 + [3, 4]
    assert (targets[1] == inputs[1] + 1).all()  # consecutive events of user 1


def test_bad_privacy_settings_and_models_are_refused():
    with pytest.raises(ValueError, match="target_epsilon"):
        PrivacyConfig(target_epsilon=0).check()
    with pytest.raises(ValueError, match="delta"):
        PrivacyConfig(delta=1.5).check()
    seqs = [np.array([2, 3, 4, 5])] * 4
    with pytest.raises(ValueError, match="supports"):
        fit_private(TrainConfig(model="gru4rec", epochs=1), PrivacyConfig(), seqs, 5, progress=False)
    for setting, message in (({"mask_seen": True}, "mask seen"), ({"ema": 0.9}, "ema")):
        with pytest.raises(ValueError, match=message):
            fit_private(TrainConfig(epochs=1, **setting), PrivacyConfig(), seqs, 5, progress=False)


@pytest.mark.slow
def test_private_training_runs_end_to_end_and_reports_the_privacy_spent(ring_data, tmp_path):
    from feature_service.server import create_feature_server
    from inference_server.server import create_inference_server
    from trainer.pipeline import train_and_export

    cfg = TrainConfig(model="sasrec", epochs=3, max_len=8, hidden=16, inner=32, seed=0)
    privacy = PrivacyConfig(target_epsilon=2.0, expected_batch=32)
    out = tmp_path / "dp"
    lines = []
    manifest = train_and_export(ring_data["train"], out, cfg, private=privacy, progress=False, log=lines.append)
    spent = read_manifest(out).privacy
    assert spent == manifest.privacy
    assert 0 < spent["epsilon"] <= 2.0 * 1.01 and spent["delta"] == pytest.approx(1 / (10 * 80))
    assert spent["unit"] == "user" and spent["noise_multiplier"] > 0 and spent["steps"] > 0
    assert spent["sample_rate"] == pytest.approx(1 / 3)  # 80 users, expected batch 32: ceil(80 / 32) = 3 batches
    assert any("privacy spent" in line for line in lines)
    fserver, fport, _, fcore = create_feature_server(out, "memory://")
    iserver, _, _, rec = create_inference_server(out, f"localhost:{fport}")
    try:
        top = rec.recommend("u005", k=5, exclude_seen=True)
        assert top.source == "model" and len(top.item_ids) == 5
    finally:
        iserver.stop(None)
        fserver.stop(None)
        rec.features.close()
        fcore.close()


def test_cli_refuses_private_training_of_unsupported_models(ring_data, tmp_path):
    from click.testing import CliRunner

    from recsys.cli import main

    result = CliRunner().invoke(
        main,
        [
            "train",
            "--interactions",
            str(ring_data["train"]),
            "--out",
            str(tmp_path / "a"),
            "--model",
            "gru4rec",
            "--private",
        ],
    )
    assert result.exit_code == 2 and "--private is not supported" in result.output and "sasrec" in result.output
    result = CliRunner().invoke(
        main,
        ["add-items", "--artifact", str(tmp_path), "--items", str(ring_data["items"]), "--out", str(tmp_path / "b")],
    )
    assert result.exit_code == 1 and "not a recsys artifact" in result.output
