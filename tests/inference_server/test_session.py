import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from recsys import onnx_session
from recsys.artifact import MODEL, read_manifest
from recsys.errors import FailedPrecondition
from recsys.onnx_session import CPU_DISABLED_OPTIMIZERS, ModelSession


def test_cpu_session_scores_every_item(trained_artifact):
    manifest = read_manifest(trained_artifact)
    session = ModelSession(trained_artifact, manifest, device="cpu")
    assert session.session.get_providers()[0] == "CPUExecutionProvider"
    session.warm_up()


def has_gpu() -> bool:
    """nvidia-smi listing a device is the cheapest honest signal that CUDA could work."""
    return (
        shutil.which("nvidia-smi") is not None
        and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    )


@pytest.mark.skipif(has_gpu(), reason="this machine has a usable CUDA device")
def test_cuda_without_a_gpu_is_a_clear_error_not_a_silent_cpu_fallback(trained_artifact):
    manifest = read_manifest(trained_artifact)
    with pytest.raises(FailedPrecondition, match="CUDAExecutionProvider"):
        ModelSession(trained_artifact, manifest, device="cuda")


def test_unknown_device_is_refused(trained_artifact):
    with pytest.raises(FailedPrecondition, match="unknown device"):
        ModelSession(trained_artifact, read_manifest(trained_artifact), device="tpu")


def _optimised_ops(path, tmp_path, disabled) -> set[str]:
    """Op types of the graph ONNX Runtime runs for `path` on CPU with `disabled` rewrites off."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}


def test_cpu_session_runs_without_the_skip_layer_norm_rewrite_and_scores_the_same(
    trained_artifact, tmp_path, monkeypatch
):
    path = trained_artifact / MODEL
    # The rewrite applies to this model unless left out, so the checks below can fail.
    assert "SkipLayerNormalization" in _optimised_ops(path, tmp_path, None)
    assert "SkipLayerNormalization" not in _optimised_ops(path, tmp_path, list(CPU_DISABLED_OPTIMIZERS))

    opened = []
    real = ort.InferenceSession

    def spy(*args, **kwargs):
        opened.append(kwargs.get("disabled_optimizers"))
        return real(*args, **kwargs)

    manifest = read_manifest(trained_artifact)
    monkeypatch.setattr(onnx_session.ort, "InferenceSession", spy)
    session = ModelSession(trained_artifact, manifest, device="cpu")
    monkeypatch.undo()
    assert opened == [list(CPU_DISABLED_OPTIMIZERS)]

    fused = real(str(path), session.tuning.options(), providers=["CPUExecutionProvider"])
    seq = np.random.default_rng(0).integers(0, manifest.num_items + 2, size=(4, manifest.max_history), dtype=np.int64)
    expected = fused.run([session.output_name], {session.input_name: seq})[0]
    np.testing.assert_allclose(session.scores(seq), expected, atol=1e-5)
