"""What the feature hop and the Python gRPC stack cost per Recommend: the inference server with
its features over gRPC, with its features read in process, and a variant on another server
stack that is not product code, on one artifact, each measured by `benchmarks.load` with the
echo floor in the same run.

    python -m benchmarks.server_stacks --artifact DIR [--levels 1,32] [--rounds 2] [--out DIR]

Stacks (`--stacks`, comma-separated), every server one process:
  grpc-memory   `recsys serve inference --features ...` against `recsys serve features --store
                memory://` (the setting of the earlier figures in docs/results/serving.md)
  grpc-sqlite   the same against a feature service on a SQLite store
  local-sqlite  `recsys serve inference --feature-store sqlite:///...`: the same store read in
                the inference server's process, no second gRPC call
  aio-local     not product code: a grpc.aio server whose handler calls the product's
                `InferenceServicer.Recommend` inline in the event loop, features read in
                process from the same SQLite store; no interceptors (no metrics, error
                mapping or auth) and no health service

CPU per call is each server's user + system time over the measured window divided by the calls
answered (`benchmarks.load`; the feature service's own CPU is reported there, not here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

STACKS = ("grpc-memory", "grpc-sqlite", "local-sqlite", "aio-local")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_aio(artifact: str, store_url: str, port: int) -> None:
    """The aio-local variant on `port` until killed."""
    from inference_server.config import InferenceConfig
    from inference_server.server import start_server
    from inference_server.servicer import InferenceServicer
    from recsys.cli.serve import open_feature_core
    from recsys.v1 import inference_pb2_grpc

    # The product's model loading, pipeline and in-process features; its own (idle) sync
    # server listens on a spare port.
    config = InferenceConfig(
        artifact_dir=artifact, feature_store=store_url, open_feature_store=open_feature_core, port=0, processes=1
    )
    servicer = InferenceServicer(start_server(config).manager)

    class NoDeadline:
        def time_remaining(self) -> None:
            return None

    class Inline(inference_pb2_grpc.InferenceServiceServicer):
        async def Recommend(self, request, context):
            return servicer.Recommend(request, NoDeadline())

    async def run() -> None:
        aio = grpc.aio.server()
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(Inline(), aio)
        aio.add_insecure_port(f"127.0.0.1:{port}")
        await aio.start()
        await aio.wait_for_termination()

    asyncio.run(run())


def _wait_ready(port: int, timeout_s: float = 60.0) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    time.sleep(1.0)  # past the channel: the model is loaded before the port opens


def measure(stack: str, args: argparse.Namespace, store_url: str, out: Path, name: str) -> dict:
    python, port = sys.executable, _free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    started: list[subprocess.Popen] = []
    features_pid = None
    try:
        if stack.startswith("grpc-"):
            features_port = _free_port()
            # memory:// is loaded from the artifact at start; the SQLite store was loaded by main()
            store = (
                ["--artifact", args.artifact, "--store", "memory://"]
                if stack == "grpc-memory"
                else ["--store", store_url]
            )
            feats = subprocess.Popen(
                [python, "-m", "recsys.cli", "serve", "features", *store, "--processes", "1",
                 "--port", str(features_port)],
                **quiet,
            )  # fmt: skip
            started.append(feats)
            _wait_ready(features_port)
            source = ["--features", f"127.0.0.1:{features_port}"]
            features_pid = feats.pid
        else:
            source = ["--feature-store", store_url]
        if stack == "aio-local":
            command = [python, "-m", "benchmarks.server_stacks", "--serve-aio", store_url, "--port", str(port)]
        else:
            command = [python, "-m", "recsys.cli", "serve", "inference", "--processes", "1", "--port", str(port)]
        server = subprocess.Popen([*command, "--artifact", args.artifact, *([] if stack == "aio-local" else source)],
                                  **quiet)  # fmt: skip
        started.append(server)
        _wait_ready(port)
        command = [
            python, "-m", "benchmarks.load", "--artifact", args.artifact, "--server", f"127.0.0.1:{port}",
            "--server-pid", str(server.pid), "--levels", args.levels, "--duration", str(args.duration),
            "--warmup", str(args.warmup), "--channels", "1", "--no-compute", "--out", str(out), "--name", name,
        ]  # fmt: skip
        if features_pid is not None:
            command += ["--features-pid", str(features_pid)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return json.loads((out / f"{name}.json").read_text())
    finally:
        for process in reversed(started):
            process.terminate()
            process.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True, help="a next-item artifact directory")
    parser.add_argument("--stacks", default=",".join(STACKS), help=f"comma-separated, of {', '.join(STACKS)}")
    parser.add_argument("--levels", default="1,32", help="concurrent clients per level")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--rounds", type=int, default=2, help="the stacks measured in turn, this many times")
    parser.add_argument("--out", help="write each run's benchmarks.load report and a summary here")
    parser.add_argument("--serve-aio", metavar="STORE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_aio:
        serve_aio(args.artifact, args.serve_aio, args.port)
        return
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    unknown = sorted(set(stacks) - set(STACKS))
    if unknown:
        parser.error(f"unknown stack(s) {', '.join(unknown)}; choose from {', '.join(STACKS)}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="server-stacks-"))
    out.mkdir(parents=True, exist_ok=True)
    store_url = f"sqlite:///{(out / 'features.sqlite').resolve()}"
    subprocess.run(
        [sys.executable, "-m", "recsys.cli", "features", "load", "--artifact", args.artifact, "--store", store_url,
         "--replace"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    rows = []
    print(f"{'stack':11} {'round':>5} {'clients':>7} {'calls/s':>8} {'server ms':>9} {'echo ms':>7}  load")
    for r in range(1, args.rounds + 1):
        for stack in stacks:
            load = os.getloadavg()[0]
            report = measure(stack, args, store_url, out, f"{stack}-r{r}")
            for level in report["levels"]:
                row = {
                    "stack": stack,
                    "round": r,
                    "clients": level["clients"],
                    "calls_per_s": level["throughput_per_s"],
                    "server_cpu_ms": level["cpu_ms_per_call"].get("server"),
                    "echo_cpu_ms": (level.get("echo") or {}).get("cpu_ms_per_call", {}).get("echo"),
                    "load_1m": round(load, 2),
                }
                rows.append(row)
                print(
                    f"{stack:11} {r:>5} {row['clients']:>7} {row['calls_per_s']:>8.1f} {row['server_cpu_ms']:>9.3f} "
                    f"{row['echo_cpu_ms'] or float('nan'):>7.3f}  {load:.2f}",
                    flush=True,
                )
    (out / "server_stacks.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out / 'server_stacks.json'}")


if __name__ == "__main__":
    main()
