"""How the inference server runs a model: ONNX Runtime tuning, micro-batching, ANN retrieval.

`open_model` turns an artifact plus `SpeedOptions` into the session the Recommender calls and,
for next-item artifacts with an ANN index (when `ann` allows it), the Retriever that answers
Recommend in its place. With the index in use the full scoring graph (N output columns) is
not loaded at all: the user encoder and the index replace it, which is what keeps a
million-item model's server small.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inference_server.batching import BatchingSession
from inference_server.retrieval import Retriever, use_ann
from recsys.artifact import MODEL, Manifest
from recsys.errors import FailedPrecondition
from recsys.onnx_session import ModelSession, SessionTuning

__all__ = ["VARIANT_FILES", "SpeedOptions", "open_model"]

VARIANT_FILES = {"fp32": MODEL, "int8": "model.int8.onnx"}


@dataclass(frozen=True)
class SpeedOptions:
    batch_max: int = 0  # micro-batching: most rows per ONNX Runtime run; 0 = off
    batch_wait_us: int = 0  # longest wait for more rows after the first (0: only those already queued)
    ann: str = "auto"  # auto | on | off: Recommend through the artifact's ANN index
    tuning: SessionTuning | None = None  # None: graph optimisation "all", the server's `threads`
    variant: str = "fp32"  # fp32 (model.onnx) | int8 (model.int8.onnx, made with `int8 = true` at export)


def open_model(
    artifact_dir: str | Path, manifest: Manifest, *, device: str, threads: int, speed: SpeedOptions | None = None
) -> tuple[object, Retriever | None]:
    """(session, retriever or None) for `manifest`'s model; batching applies to next-item models
    (one (1, L) window per request), where rows of concurrent requests stack."""
    speed = speed or SpeedOptions()
    ann = None
    if manifest.task == "next_item" and use_ann(artifact_dir, speed.ann):
        ann = Retriever(artifact_dir, manifest, device=device, threads=threads, tuning=speed.tuning)
        session = ann.encoder
    else:
        if speed.variant not in VARIANT_FILES:
            raise FailedPrecondition(f"unknown model variant {speed.variant!r}; use one of {', '.join(VARIANT_FILES)}")
        session = ModelSession(
            artifact_dir,
            manifest,
            device=device,
            threads=threads,
            tuning=speed.tuning,
            model_file=VARIANT_FILES[speed.variant],
        )
    if speed.batch_max > 0 and manifest.task == "next_item":
        session = BatchingSession(session, max_batch=speed.batch_max, max_wait_us=speed.batch_wait_us)
        if ann is not None:
            ann.encoder = session
    return session, ann
