import shutil
import subprocess

import pytest

from recsys.artifact import read_manifest
from recsys.errors import FailedPrecondition
from recsys.onnx_session import ModelSession


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
