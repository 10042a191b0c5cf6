"""ONNX Runtime session over an artifact's model, on the device that was asked for (shared by the inference server and `recsys evaluate`).

The device check is strict: onnxruntime-gpu lists CUDAExecutionProvider even on machines
without a GPU and silently falls back to CPU, so after creating the session we check which
provider it really got and refuse to start otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from recsys.artifact import MODEL, Manifest
from recsys.errors import FailedPrecondition

__all__ = ["DEVICES", "ModelSession"]

log = logging.getLogger(__name__)

DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class ModelSession:
    """Runs the artifact's model: `scores(item_seq) -> (batch, num_items)` float32."""

    def __init__(self, artifact_dir: str | Path, manifest: Manifest, *, device: str = "cpu", threads: int = 1):
        if device not in DEVICES:
            raise FailedPrecondition(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
        wanted = DEVICES[device]
        if wanted not in ort.get_available_providers():
            raise FailedPrecondition(
                f"--device {device} asked for {wanted}, but this onnxruntime build only has "
                f"{', '.join(ort.get_available_providers())} (install recsys[gpu] for CUDA)"
            )
        if device == "cuda" and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from pip's nvidia-* wheels, where installed
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = [wanted] if device == "cpu" else [wanted, "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(Path(artifact_dir) / MODEL), options, providers=providers)
        got = self.session.get_providers()[0]
        if got != wanted:
            raise FailedPrecondition(
                f"--device {device} asked for {wanted} but ONNX Runtime fell back to {got}: "
                "no usable CUDA device or CUDA libraries on this machine"
            )
        self.device = device
        self.input_name = manifest.inputs[0].name
        self.output_name = manifest.output
        self.num_items = manifest.num_items
        self.max_len = manifest.max_history

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Named inputs -> the manifest's output."""
        return self.session.run([self.output_name], feeds)[0]

    def scores(self, item_seq: np.ndarray) -> np.ndarray:
        """item_seq (B, L) int64 left-padded tokens -> (B, num_items) float32."""
        return self.session.run([self.output_name], {self.input_name: item_seq})[0]

    def warm_up(self) -> None:
        """One run, so the first request does not pay for lazy initialisation; checks the shape.
        Only next-item models: feature-based ones are warmed up by their pipeline."""
        out = self.scores(np.zeros((1, self.max_len), dtype=np.int64))
        if out.shape != (1, self.num_items):
            raise FailedPrecondition(f"model output shape {out.shape} != (1, {self.num_items}) in the manifest")
