"""`make bench`: the standard serving benchmark, each case against real servers.

Each case starts a feature service (memory store loaded from the artifact) and an inference
server as their own processes, runs the load generator (benchmarks/load.py) against them,
stops them, and moves on. Writes <out>/<case>.json, <out>/suite.json (all cases plus the Done-when checks) and
<out>/latency.png. Cases whose artifact is missing are skipped with the command that makes it.

    python -m benchmarks.bench_suite --out .bench/serving [--cases ml100k,ml100k-batched,...] [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.load import BenchConfig, format_report, run_bench, write_plot
from recsys.client import free_port, wait_serving

ROOT = Path(__file__).resolve().parents[1]  # artifacts and servers are relative to the repository

RECSYS = [sys.executable, "-m", "recsys.cli"]
MAKE = {
    "runs/demo/sasrec": "make demo (or: recsys train --interactions data/ml-100k/interactions.csv --out runs/demo/sasrec)",
    "runs/bench/deepfm": "recsys train --model deepfm --interactions data/ml-100k/interactions.csv "
    "--users data/ml-100k/users.csv --items data/ml-100k/items.csv --out runs/bench/deepfm --epochs 3",
    "runs/synth1m/sasrec": "make bench-synth (recsys data synth --artifact runs/synth1m/sasrec --users 20000 "
    "--interactions 2000000 --steps 1500)",
}


def cases(sasrec: str, ranker: str, synth: str) -> dict[str, dict]:
    """name -> artifact, server flags, bench settings."""
    return {
        "ml100k": {"artifact": sasrec, "flags": [], "rpc": "recommend", "levels": (1, 8, 32)},
        "ml100k-batched": {
            "artifact": sasrec,
            "flags": ["--batch-max", "32"],
            "rpc": "recommend",
            "levels": (1, 8, 32),
        },
        # 1,000 candidates per call: two intra-op threads split ONNX Runtime's matmuls (one
        # thread: p99 9.8 ms at one client; two: 8.0 ms, 2026-11-28, quiet machine)
        "score1000": {
            "artifact": ranker,
            "flags": ["--threads", "2"],
            "rpc": "score",
            "levels": (1, 8),
            "candidates": 1000,
        },
        "synth1m-ann": {"artifact": synth, "flags": [], "rpc": "recommend", "levels": (1, 8, 32)},
        "synth1m-ann-batched": {
            "artifact": synth,
            "flags": ["--batch-max", "32"],
            "rpc": "recommend",
            "levels": (1, 8, 32),
        },
        "synth1m-exact": {"artifact": synth, "flags": ["--ann", "off"], "rpc": "recommend", "levels": (1, 8)},
        "synth1m-exact-batched": {
            "artifact": synth,
            "flags": ["--ann", "off", "--batch-max", "32"],
            "rpc": "recommend",
            "levels": (1, 8),
        },
    }


def start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)


def run_case(name: str, case: dict, args, out: Path) -> dict | None:
    artifact = case["artifact"]
    if not (ROOT / artifact / "manifest.json").is_file():
        print(f"[{name}] skipped: no artifact at {artifact}; make it with: {MAKE.get(artifact, '?')}", flush=True)
        return None
    fport, iport = free_port(), free_port()
    features = start(
        [*RECSYS, "serve", "features", "--artifact", artifact, "--store", "memory://", "--port", str(fport)],
        out / f"{name}.features.log",
    )
    inference = None
    try:
        wait_serving(f"localhost:{fport}", features, timeout_s=600)
        inference = start(
            [
                *RECSYS,
                "serve",
                "inference",
                "--artifact",
                artifact,
                "--features",
                f"localhost:{fport}",
                "--port",
                str(iport),
                *case["flags"],
            ],
            out / f"{name}.inference.log",
        )
        wait_serving(f"localhost:{iport}", inference, timeout_s=600)
        cfg = BenchConfig(
            server=f"localhost:{iport}",
            artifact=artifact,
            rpc=case["rpc"],
            levels=case["levels"],
            candidates=case.get("candidates", 1000),
            duration_s=args.duration,
            warmup_s=args.warmup,
            users=args.users,
            server_pid=inference.pid,
            features_pid=features.pid,
            label=name,
        )
        report = run_bench(cfg, log=lambda m: print(f"[{name}] {m}", flush=True))
        report["server_flags"] = case["flags"]
    finally:
        for process in (inference, features):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    print(format_report(report), flush=True)
    return report


def checks(reports: dict[str, dict]) -> list[dict]:
    """The benchmark's headline checks, measured (None where the case did not run)."""

    def level(name, clients):
        r = reports.get(name)
        return next((lv for lv in r["levels"] if lv["clients"] == clients), None) if r else None

    out = []
    one, many = level("ml100k", 1), level("ml100k", 32)
    if one:
        floor = reports["ml100k"]["floor"].get("floor_p50_ms")
        out.append(
            {
                "check": "ML-100K Recommend 1 client: p50 <= 1.5 x floor",
                "value": one["p50_ms"],
                "limit": round(1.5 * floor, 3) if floor else None,
                "ok": bool(floor) and one["p50_ms"] <= 1.5 * floor,
            }
        )
        out.append(
            {
                "check": "ML-100K Recommend 1 client: p99 <= 5 ms",
                "value": one["p99_ms"],
                "limit": 5.0,
                "ok": one["p99_ms"] <= 5.0,
            }
        )
    if many:
        ratio = many.get("throughput_vs_echo")
        out.append(
            {
                "check": "ML-100K 32 clients: throughput >= 40% of echo",
                "value": ratio,
                "limit": 0.4,
                "ok": ratio is not None and ratio >= 0.4,
            }
        )
        out.append(
            {
                "check": "ML-100K 32 clients: p99 <= 50 ms, no errors",
                "value": [many["p99_ms"], many["errors"]],
                "limit": [50.0, 0],
                "ok": many["p99_ms"] <= 50.0 and many["errors"] == 0,
            }
        )
    score = level("score1000", 1)
    if score:
        out.append(
            {
                "check": "Score 1,000 candidates 1 client: p99 <= 10 ms",
                "value": score["p99_ms"],
                "limit": 10.0,
                "ok": score["p99_ms"] <= 10.0,
            }
        )
    big = level("synth1m-ann", 1)
    if big:
        recall = reports["synth1m-ann"]["compute"].get("ann", {}).get("recall_at_10")
        out.append(
            {
                "check": "1M items Recommend 1 client: p99 <= 10 ms",
                "value": big["p99_ms"],
                "limit": 10.0,
                "ok": big["p99_ms"] <= 10.0,
            }
        )
        out.append(
            {
                "check": "1M items ANN recall@10 >= 0.95",
                "value": recall,
                "limit": 0.95,
                "ok": recall is not None and recall >= 0.95,
            }
        )
        rss = (reports["synth1m-ann"].get("server_memory") or {}).get("peak_rss_mib")
        out.append(
            {
                "check": "1M items server peak RSS < 4 GiB",
                "value": rss,
                "limit": 4096,
                "ok": rss is not None and rss < 4096,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".bench/serving")
    parser.add_argument("--cases", default="all", help="comma-separated case names, or all")
    parser.add_argument("--sasrec", default="runs/demo/sasrec")
    parser.add_argument("--ranker", default="runs/bench/deepfm")
    parser.add_argument("--synth", default="runs/synth1m/sasrec")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = cases(args.sasrec, args.ranker, args.synth)
    names = list(table) if args.cases == "all" else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; known: {', '.join(table)}")
    print(
        f"load average at start: {os.getloadavg()} ({os.cpu_count()} cores): figures are noisy when it is high",
        flush=True,
    )
    reports = {}
    for name in names:
        report = run_case(name, table[name], args, out)
        if report is not None:
            reports[name] = report
    results = checks(reports)
    suite = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_end": os.getloadavg(),
        "checks": results,
        "cases": reports,
    }
    (out / "suite.json").write_text(json.dumps(suite, indent=2))
    if reports:
        write_plot(list(reports.values()), out / "latency.png")
    for c in results:
        print(f"{'PASS' if c['ok'] else 'FAIL'}  {c['check']}: {c['value']} (limit {c['limit']})")
    print(f"wrote {out}/suite.json and {out}/latency.png")


if __name__ == "__main__":
    main()
