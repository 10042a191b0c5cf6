"""ONNX Runtime session over an artifact's model, on the device that was asked for (shared by the inference server and `recsys evaluate`).

The device check is strict: onnxruntime-gpu lists CUDAExecutionProvider even on machines
without a GPU and silently falls back to CPU, so after creating the session we check which
provider it really got and refuse to start otherwise.

Tuning (`SessionTuning`): graph optimisation level, intra-/inter-op threads, the CPU memory
arena and thread spinning. Thread counts are sized against the server's own concurrency
(`threads_for`): N worker threads each running ORT with M intra-op threads would ask for N*M
cores, and on a small machine that oversubscription collapses under load. Spinning is off by
default: a spinning ORT pool burns the cores the gRPC threads need between runs. On CUDA the
inputs and outputs go through I/O binding (one host->device copy in, one device->host copy out,
no staging by `run`).

A model file ONNX Runtime cannot load is a `FailedPrecondition` naming the artifact and the
first line of ONNX Runtime's error. `check_finite` turns NaN or ±inf in a model's output into
`NonFiniteScores`: serving code treats such a run as failed rather than ranking by NaN.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from recsys.artifact import MODEL, Manifest
from recsys.errors import FailedPrecondition, NonFiniteScores
from recsys.processes import available_cores

__all__ = [
    "CPU_DISABLED_OPTIMIZERS",
    "DEVICES",
    "GRAPH_OPT_LEVELS",
    "ModelSession",
    "SessionTuning",
    "check_finite",
    "threads_for",
]

log = logging.getLogger(__name__)

DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
GRAPH_OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# What ONNX Runtime raises for a file that is not a model it can read (bytes that do not parse,
# a graph that does not check, an opset or IR version it does not know), and its other errors.
_NOT_A_MODEL_ERRORS = ("InvalidProtobuf", "InvalidGraph", "Fail", "NotImplemented", "InvalidArgument", "NoModel")
_NOT_A_MODEL = tuple(getattr(_ort_state, n) for n in _NOT_A_MODEL_ERRORS if hasattr(_ort_state, n))
_ORT_ERRORS = tuple(
    v for v in vars(_ort_state).values() if isinstance(v, type) and issubclass(v, Exception) and v is not Exception
)
# Graph rewrites left out on CPU: ONNX Runtime's CPU SkipLayerNormalization kernel is slower than
# the Add + LayerNormalization it replaces, by a fifth of a SASRec run at batch 1 and a quarter at
# batch 32 (docs/results/serving.md). Outputs agree to float32 rounding either way.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


@dataclass(frozen=True)
class SessionTuning:
    graph_opt: str = "all"  # key of GRAPH_OPT_LEVELS
    intra_threads: int = 1  # threads inside one operator; 0 = ONNX Runtime's default (all cores)
    inter_threads: int = 1  # threads across independent operators (only with parallel=True)
    parallel: bool = False  # ORT_PARALLEL execution mode (rarely helps these small graphs)
    arena: bool = True  # CPU memory arena: reuses buffers between runs instead of malloc/free
    spinning: bool = False  # intra-op threads busy-wait for work (fast when idle cores exist)

    def check(self) -> None:
        if self.graph_opt not in GRAPH_OPT_LEVELS:
            raise FailedPrecondition(
                f"unknown graph optimisation level {self.graph_opt!r}; use one of {', '.join(GRAPH_OPT_LEVELS)}"
            )
        if self.intra_threads < 0 or self.inter_threads < 0:
            raise FailedPrecondition("ONNX Runtime thread counts must be >= 0")

    def options(self) -> ort.SessionOptions:
        self.check()
        options = ort.SessionOptions()
        options.graph_optimization_level = GRAPH_OPT_LEVELS[self.graph_opt]
        options.intra_op_num_threads = self.intra_threads
        options.inter_op_num_threads = self.inter_threads
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if self.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_cpu_mem_arena = self.arena
        spin = "1" if self.spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        options.log_severity_level = 3
        return options


def threads_for(concurrent_runs: int, cores: int | None = None) -> int:
    """Intra-op threads per session so that `concurrent_runs` simultaneous runs fill, but do
    not oversubscribe, the machine: max(1, cores // concurrent_runs). A server that batches
    requests into one run at a time passes 1; one that runs ORT in each of N workers passes N.
    `cores` defaults to the cores this process may use (affinity and container CPU limit)."""
    cores = cores or available_cores()
    return max(1, cores // max(1, concurrent_runs))


def check_finite(values: np.ndarray, what: str) -> np.ndarray:
    """`values` unchanged when every one is finite (integer outputs, e.g. top-k indices, always
    are); else `NonFiniteScores` saying how many are not. Two reductions, no mask: NaN
    propagates through min and max, ±inf shows in them."""
    if values.dtype.kind not in "fc" or values.size == 0:
        return values
    if np.isfinite(values.min()) and np.isfinite(values.max()):
        return values
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    raise NonFiniteScores(f"{what} gave {bad} non-finite value(s) (NaN or inf) of {values.size}")


def _open(path: Path, what: str, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    disabled = list(CPU_DISABLED_OPTIMIZERS) if providers == [DEVICES["cpu"]] else None
    try:
        return ort.InferenceSession(str(path), options, providers=providers, disabled_optimizers=disabled)
    except _NOT_A_MODEL as exc:
        raise FailedPrecondition(f"{what} is not a valid ONNX model: {_first_line(exc)}") from None
    except _ORT_ERRORS as exc:  # the rest (e.g. a provider that fails to start)
        raise FailedPrecondition(f"{what}: ONNX Runtime cannot open it: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else f"{text[:300]}…"


class ModelSession:
    """Runs the artifact's model: `scores(item_seq) -> (batch, num_items)` float32.

    `model_file` picks another graph of the artifact (an int8 or fp16 variant, or the user
    encoder of an ANN artifact); `output` then names the output to return (default the
    manifest's). `threads` is kept for callers that set only the intra-op thread count.
    `on_run(seconds)`, when set, hears how long each run spent in ONNX Runtime (metrics).
    """

    on_run: Callable[[float], None] | None = None

    def __init__(
        self,
        artifact_dir: str | Path,
        manifest: Manifest,
        *,
        device: str = "cpu",
        threads: int | None = None,
        tuning: SessionTuning | None = None,
        model_file: str = MODEL,
        output: str | None = None,
    ):
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
        tuning = tuning or SessionTuning()
        if threads is not None:
            tuning = SessionTuning(**{**tuning.__dict__, "intra_threads": threads})
        self.tuning = tuning
        providers = [wanted] if device == "cpu" else [wanted, "CPUExecutionProvider"]
        path = Path(artifact_dir) / model_file
        if not path.is_file():
            raise FailedPrecondition(f"artifact {artifact_dir} has no {model_file}")
        self.session = _open(path, f"artifact {artifact_dir}: {model_file}", tuning.options(), providers)
        got = self.session.get_providers()[0]
        if got != wanted:
            raise FailedPrecondition(
                f"--device {device} asked for {wanted} but ONNX Runtime fell back to {got}: "
                "no usable CUDA device or CUDA libraries on this machine"
            )
        self.device = device
        self.input_name = manifest.inputs[0].name
        self.output_name = output or manifest.output
        self.num_items = manifest.num_items
        self.max_len = manifest.max_history

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Named inputs -> the chosen output."""
        start = time.perf_counter()
        if self.device == "cuda":
            out = self._run_bound(feeds)
        else:
            out = self.session.run([self.output_name], feeds)[0]
        if self.on_run is not None:
            self.on_run(time.perf_counter() - start)
        return out

    def scores(self, item_seq: np.ndarray) -> np.ndarray:
        """item_seq (B, L) int64 left-padded tokens -> (B, num_items) float32 (or the chosen output)."""
        return self.run({self.input_name: item_seq})

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_output(self.output_name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def warm_up(self) -> None:
        """One run, so the first request does not pay for lazy initialisation; checks the shape.
        Only next-item models: feature-based ones are warmed up by their pipeline."""
        out = self.scores(np.zeros((1, self.max_len), dtype=np.int64))
        if out.shape != (1, self.num_items):
            raise FailedPrecondition(f"model output shape {out.shape} != (1, {self.num_items}) in the manifest")
