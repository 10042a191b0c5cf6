"""One client's Recommend latency over HTTP/JSON (through the gateway) against gRPC, same server.

    python -m benchmarks.http_vs_grpc --artifact DIR [--calls 2000] [--k 10]

Starts the feature service (memory store), the inference server and the gateway as three
`recsys serve` processes on loopback, then one client in this process sends Recommend for the
artifact's users back to back, in alternating blocks of 100 calls per path (so a change in
the machine's load hits both alike): gRPC on one kept channel, HTTP on one kept-alive
connection. Prints p50/p99 per path, their ratio and the load average, as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from recsys.artifact import HISTORIES, read_jsonl
from recsys.client import free_port, wait_serving
from recsys.v1 import inference_pb2, inference_pb2_grpc

__all__ = ["measure"]

BLOCK = 100


@contextlib.contextmanager
def _processes(artifact: Path):
    recsys = [sys.executable, "-m", "recsys.cli"]
    fport, iport, hport = free_port(), free_port(), free_port()
    loopback = ["--host", "127.0.0.1"]
    commands = [
        [
            *recsys,
            "serve",
            "features",
            "--artifact",
            str(artifact),
            "--store",
            "memory://",
            *loopback,
            "--port",
            str(fport),
        ],
        [*recsys, "serve", "inference", "--artifact", str(artifact), "--features", f"127.0.0.1:{fport}", *loopback]
        + ["--port", str(iport)],
        [*recsys, "serve", "http", "--inference", f"127.0.0.1:{iport}", "--features", f"127.0.0.1:{fport}"]
        + [*loopback, "--port", str(hport)],
    ]
    started = []
    try:
        for command, target in zip(commands, (f"127.0.0.1:{fport}", f"127.0.0.1:{iport}", None)):
            started.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
            if target is not None:
                wait_serving(target, started[-1])
        _wait_http(hport, started[-1])
        yield f"127.0.0.1:{iport}", f"127.0.0.1:{hport}"
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(30)


def _wait_http(port: int, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the gateway exited")
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError("the gateway did not answer /healthz")


def measure(artifact: str | Path, calls: int = 2000, k: int = 10) -> dict:
    """p50/p99 in ms of `calls` Recommend calls per path at one client, and p50 HTTP / gRPC."""
    users = [row["user_id"] for row in read_jsonl(Path(artifact) / HISTORIES)] or ["nobody"]
    user_cycle = itertools.cycle(users)
    times: dict[str, list[float]] = {"grpc": [], "http": []}
    from_model: list[bool] = []
    with _processes(Path(artifact)) as (itarget, haddress), grpc.insecure_channel(itarget) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        connection = http.client.HTTPConnection(haddress, timeout=10)

        def via_grpc(user: str) -> None:
            reply = stub.Recommend(inference_pb2.RecommendRequest(user_id=user, k=k, exclude_seen=True), timeout=5)
            from_model.append(reply.source == inference_pb2.SOURCE_MODEL)

        def via_http(user: str) -> None:
            body = json.dumps({"userId": user, "k": k, "excludeSeen": True}).encode()
            connection.request("POST", "/v1/recommend", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")

        for call in (via_grpc, via_http) * 2:  # warm-up, not counted
            for _ in range(BLOCK):
                call(next(user_cycle))
        for _ in range(max(1, calls // BLOCK)):
            for name, call in (("grpc", via_grpc), ("http", via_http)):
                for _ in range(BLOCK):
                    start = time.perf_counter()
                    call(next(user_cycle))
                    times[name].append((time.perf_counter() - start) * 1000)
        connection.close()
    result = {
        name: {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)), "calls": len(t)}
        for name, t in times.items()
    }
    result["p50_ratio"] = result["http"]["p50_ms"] / result["grpc"]["p50_ms"]
    result["model_answers"] = float(np.mean(from_model))  # the rest: popularity (unknown users)
    result["load_average"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--calls", type=int, default=2000, help="Measured calls per path.")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(measure(args.artifact, args.calls, args.k), indent=2))


if __name__ == "__main__":
    main()
