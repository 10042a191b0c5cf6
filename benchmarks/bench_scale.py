"""`make bench-scale`: what recsys costs on a log a hundred times ML-100K, end to end.

    python -m benchmarks.bench_scale [--events 10000000 --users 100000 --items 200000] [--out .bench/scale]

On one synthetic log (`recsys data synth`: power-law popularity, topics, sequences), one step
after the other, each in its own process so its peak RSS is its own:

1. data preparation: read + clean + encode the Parquet log (rows/s, per stage; benchmarks/bench_data.py `prep`);
2. training speed: SASRec's events/s with the default loss and with the full softmax forced, over
   this catalogue and over 1,682 items (benchmarks/bench_catalogue.py `speed`, fixed step counts);
3. one epoch of `recsys train` on the whole log with the defaults: wall time, events/s, peak RSS;
4. `recsys features load` of that artifact into a fresh SQLite store: events/s;
5. serving the artifact: Recommend p50/p99 and inference-server CPU per call at 1 and 32 clients,
   with `--processes 1` and `--processes 2` (benchmarks/load.py over several channels).

Every step records the 1-minute load average before and after. Writes OUT/scale.json and prints
a summary table; docs/results/scale.md holds a run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RECSYS = [sys.executable, "-m", "recsys.cli"]


def _load() -> float:
    return os.getloadavg()[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measured(command: list[str], log, **kwargs) -> dict[str, Any]:
    """Runs `command` through a child that reports its peak RSS; returns wall s, RSS, load, stdout."""
    before = _load()
    start = time.perf_counter()
    wrapper = [sys.executable, "-m", "benchmarks.bench_scale", "--rss-of", "--", *command]
    log("$ " + " ".join(command))
    done = subprocess.run(wrapper, capture_output=True, text=True, **kwargs)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rss = re.findall(r"^peak_rss_mb (\d+)$", done.stderr, flags=re.M)
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": int(rss[-1]) if rss else None,
        "load_before": round(before, 2),
        "load_after": round(_load(), 2),
        "stdout": done.stdout,
    }


def _rss_of(command: list[str]) -> int:
    """Runs `command`, then prints the peak RSS of it and its descendants (MB) on stderr."""
    code = subprocess.run(command).returncode
    print(f"peak_rss_mb {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}", file=sys.stderr)
    return code


def synth(out: Path, args, log) -> Path:
    data = out / "data"
    spec = {"items": args.items, "users": args.users, "interactions": args.events, "seed": 0}
    marker = data / "spec.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return data / "interactions.parquet"
    command = [*RECSYS, "data", "synth", "--out", str(data)]
    command += ["--items", str(args.items), "--users", str(args.users), "--interactions", str(args.events)]
    measured(command, log)
    marker.write_text(json.dumps(spec))
    return data / "interactions.parquet"


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def step_prep(path: Path, log) -> dict:
    code = f"import json; from pathlib import Path; from benchmarks.bench_data import prep; print(json.dumps(prep(Path({str(path)!r}))))"
    run = measured([sys.executable, "-c", code], log)
    return {**json_lines(run.pop("stdout"))[-1], **run}


def step_speed(args, out: Path, log) -> list[dict]:
    rows = out / "speed.jsonl"
    rows.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.bench_catalogue", "speed", "--items", f"1682,{args.items}"]
    command += ["--configs", "default", "--steps", str(args.speed_steps), "--threads", "0", "--out", str(rows)]
    measured(command, log)
    return json_lines(rows.read_text())


def step_train(path: Path, out: Path, args, log) -> dict:
    artifact = out / "artifact"
    config = out / "train.toml"
    config.write_text(f"epochs = {args.epochs}\neval_every = 1\n")
    command = [*RECSYS, "train", "--interactions", str(path), "--out", str(artifact), "--config", str(config)]
    run = measured([*command, "--quiet"], log)
    run.pop("stdout")
    manifest = json.loads((artifact / "manifest.json").read_text())
    history = manifest["training"].get("history", [])
    rates = [row["events_per_s"] for row in history if "events_per_s" in row]
    return {
        **run,
        "loss": manifest["training"].get("resolved", {}).get("loss"),
        "num_items": manifest["num_items"],
        "events_per_s_epoch": rates,
        "validation": {k: v for k, v in manifest["metrics"].items() if k.startswith(("valid_ndcg", "valid_hr"))},
        "artifact": str(artifact),
    }


def step_features(artifact: Path, out: Path, log) -> dict:
    db = (out / "features.sqlite").resolve()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    run = measured([*RECSYS, "features", "load", "--artifact", str(artifact), "--store", f"sqlite://{db}"], log)
    report = json_lines(run.pop("stdout"))[-1]  # what load_artifact wrote, and its own seconds
    events = report["events_recorded"] + report["duplicates"]
    return {**run, **report, "events": events, "events_per_s": round(events / max(report["seconds"], 1e-9))}


def _wait_for(port: int, seconds: float = 120.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.time() + seconds
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.time() < deadline:
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise RuntimeError(f"server on port {port} not SERVING after {seconds:.0f} s")


def step_serve(artifact: Path, out: Path, processes: int, args, log) -> dict:
    db = (out / "features.sqlite").resolve()
    fport, iport, mport = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "RECSYS_LOG_LEVEL": "WARNING"}
    features = subprocess.Popen(
        [*RECSYS, "serve", "features", "--store", f"sqlite://{db}", "--port", str(fport), "--processes", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    inference = subprocess.Popen(
        [*RECSYS, "serve", "inference", "--artifact", str(artifact), "--features", f"127.0.0.1:{fport}"]
        + ["--port", str(iport), "--processes", str(processes), "--metrics-port", str(mport)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_for(fport)
        _wait_for(iport)
        report = out / f"serve-{processes}"
        command = [sys.executable, "-m", "benchmarks.load", "--artifact", str(artifact)]
        command += ["--server", f"127.0.0.1:{iport}", "--server-metrics", f"127.0.0.1:{mport}", "--levels", "1,32"]
        command += ["--duration", str(args.serve_seconds), "--no-compute", "--out", str(report), "--name", "load"]
        before = _load()
        subprocess.run(command, check=True, capture_output=True, text=True)
        levels = json.loads((report / "load.json").read_text())["levels"]
        return {
            "processes": processes,
            "load_before": round(before, 2),
            "load_after": round(_load(), 2),
            "levels": levels,
        }
    finally:
        for proc in (inference, features):
            proc.terminate()
        for proc in (inference, features):
            proc.wait(timeout=60)


def summary(result: dict) -> str:
    lines = [f"synthetic log: {result['spec']}"]
    p = result.get("prep")
    if p:
        lines.append(
            f"data preparation: {p['rows_per_s']:,} rows/s ({p['rows']:,} rows, peak RSS {p['peak_rss_mb']:,} MB)"
        )
    for row in result.get("speed", []):
        lines.append(
            f"training speed: {row.get('config')} over {row.get('items'):,} items: {row.get('events_per_s'):,} events/s"
        )
    t = result.get("train")
    if t:
        lines.append(
            f"one epoch, defaults ({t['loss']}): {t['seconds']:.0f} s, events/s {t['events_per_s_epoch']}, peak RSS {t['peak_rss_mb']:,} MB"
        )
    f = result.get("features")
    if f:
        lines.append(
            f"features load into SQLite: {f['events']:,} events in {f['seconds']:.0f} s = {f['events_per_s']:,} events/s"
        )
    for s in result.get("serve", []):
        for lv in s["levels"]:
            cpu = lv.get("cpu_ms_per_call", {}).get("server")
            lines.append(
                f"serving, {s['processes']} process(es), {lv['clients']} clients: {lv['throughput_per_s']:.0f}/s, "
                f"p50 {lv['p50_ms']:.1f} ms, p99 {lv['p99_ms']:.1f} ms, server CPU {cpu} ms/call, errors {lv.get('errors', 0)}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--rss-of"]:
        return _rss_of(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the full training run")
    parser.add_argument("--speed-steps", type=int, default=40)
    parser.add_argument("--serve-seconds", type=float, default=10.0)
    parser.add_argument("--steps", default="prep,speed,train,features,serve")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "recsys-bench-scale"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = set(args.steps.split(","))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    spec = {"events": args.events, "users": args.users, "items": args.items}
    saved = out / "scale.json"
    # Steps run again replace their own results; the others are kept from an earlier run on the same log.
    result: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    if result.get("spec") != spec:
        result = {}
    result.update(spec=spec, cpus=os.cpu_count(), started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = synth(out, args, log)
    artifact = out / "artifact"
    runs = {
        "prep": lambda: step_prep(path, log),
        "speed": lambda: step_speed(args, out, log),
        "train": lambda: step_train(path, out, args, log),
        "features": lambda: step_features(artifact, out, log),
        "serve": lambda: [step_serve(artifact, out, p, args, log) for p in (1, 2)],
    }
    for name, run in runs.items():
        if name in steps:
            result[name] = run()
            result[f"{name}_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            saved.write_text(json.dumps(result, indent=2))  # each step kept as soon as it is done
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
