"""Device check: ONNX Runtime latency and throughput on CPU vs CUDA at batch 1, 32 and 256.

Made to run in one short GPU session (see shared/NOTES.md "GPU checks"): no torch, no data, no
artifact needed. By default it builds the serving graph of a next-item model over `--items`
items by hand (item_seq (B, L) -> embedding mean -> one hidden layer -> scores against every
item -> TopK k), random weights, so the compute is the real shape of serving; `--artifact DIR`
times an artifact's model.onnx instead. CUDA runs go through I/O binding (recsys.onnx_session).
Asking for CUDA where ONNX Runtime cannot use it is reported as an error for that device,
never as a silent CPU figure.

    python -m benchmarks.gpu_check --items 1000000 --out gpu_check.json
    python -m benchmarks.gpu_check --devices cpu --items 5000 --repeats 5   # a quick CPU-only run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from recsys.onnx_session import DEVICES, SessionTuning


def scoring_graph(path: Path, items: int, dim: int, max_len: int, k: int, seed: int = 0) -> None:
    """Writes a next-item serving graph over `items` items with random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    table = (rng.normal(size=(items + 1, dim)) / np.sqrt(dim)).astype(np.float32)
    table[0] = 0.0
    w = (rng.normal(size=(dim, dim)) / np.sqrt(dim)).astype(np.float32)
    inits = [
        numpy_helper.from_array(table, "item_table"),
        numpy_helper.from_array(table[1:].T.copy(), "item_table_t"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([k], np.int64), "k"),
    ]
    nodes = [
        helper.make_node("Gather", ["item_table", "item_seq"], ["emb"]),  # (B, L, D)
        helper.make_node("ReduceMean", ["emb", "axis1"], ["pooled"], keepdims=0),  # (B, D)
        helper.make_node("MatMul", ["pooled", "w"], ["hidden_pre"]),
        helper.make_node("Tanh", ["hidden_pre"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "item_table_t"], ["scores"]),  # (B, N)
        helper.make_node("TopK", ["scores", "k"], ["top_scores", "top_items"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "scoring",
        [helper.make_tensor_value_info("item_seq", TensorProto.INT64, ["batch", max_len])],
        [
            helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("top_items", TensorProto.INT64, ["batch", k]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # onnxruntime reads IR <= 13; onnx 1.23 writes 14 by default
    onnx.save(model, str(path))


def open_session(path: Path, device: str, threads: int) -> ort.InferenceSession:
    wanted = DEVICES[device]
    if device == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    providers = [wanted] if device == "cpu" else [wanted, "CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), SessionTuning(intra_threads=threads).options(), providers=providers)
    if session.get_providers()[0] != wanted:
        raise RuntimeError(f"{wanted} was asked for but ONNX Runtime fell back to {session.get_providers()[0]}")
    return session


def time_device(
    session: ort.InferenceSession, device: str, batch: int, max_len: int, items: int, repeats: int, warmup: int
) -> dict:
    rng = np.random.default_rng(batch)
    x = rng.integers(1, items + 1, (batch, max_len), dtype=np.int64)
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]

    def once():
        if device == "cuda":
            binding = session.io_binding()
            binding.bind_cpu_input(input_name, x)
            for name in outputs:
                binding.bind_output(name, "cuda")
            session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()
        return session.run(outputs, {input_name: x})

    for _ in range(warmup):
        once()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        samples.append((time.perf_counter() - start) * 1000)
    p50, p99 = np.percentile(samples, [50, 99])
    return {
        "batch": batch,
        "p50_ms": round(float(p50), 3),
        "p99_ms": round(float(p99), 3),
        "rows_per_s": round(batch / (float(np.median(samples)) / 1000), 1),
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--cpu-threads", type=int, default=0, help="0 = every core")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--artifact", help="Time this artifact's model.onnx instead of the generated graph.")
    parser.add_argument("--out", help="Write the JSON report here too.")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    report = {
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "items": args.items,
        "dim": args.dim,
        "max_len": args.max_len,
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.artifact:
            path = Path(args.artifact) / "model.onnx"
            manifest = json.loads((Path(args.artifact) / "manifest.json").read_text())
            args.items, args.max_len = manifest["num_items"], manifest["schema"]["max_history"]
            report.update(items=args.items, max_len=args.max_len, artifact=args.artifact)
        else:
            path = Path(tmp) / "scoring.onnx"
            start = time.perf_counter()
            scoring_graph(path, args.items, args.dim, args.max_len, args.k)
            report["graph_build_s"] = round(time.perf_counter() - start, 1)
        for device in args.devices.split(","):
            try:
                session = open_session(path, device, args.cpu_threads if device == "cpu" else 1)
                report["results"][device] = [
                    time_device(session, device, b, args.max_len, args.items, args.repeats, args.warmup)
                    for b in batches
                ]
            except Exception as exc:  # noqa: BLE001 - reported per device, the other still runs
                report["results"][device] = {"error": f"{type(exc).__name__}: {exc}"}
    for device, rows in report["results"].items():
        if isinstance(rows, dict):
            print(f"{device}: {rows['error']}")
            continue
        for row in rows:
            print(
                f"{device:>4} batch {row['batch']:>4}: p50 {row['p50_ms']:>9.3f} ms  p99 {row['p99_ms']:>9.3f} ms  "
                f"{row['rows_per_s']:>12.1f} rows/s"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
