"""Load against a running inference server, measured against its floor.

    python -m benchmarks.load --artifact runs/demo/sasrec [--server localhost:50052] [--levels 1,8,32] [--out DIR]

For each concurrency level, `clients` concurrent callers (asyncio tasks over `channels`
distinct gRPC connections, caller i on connection i % channels) send Recommend or Score requests for users drawn from the artifact, back to back, for
`duration_s` seconds (or `requests` calls) after `warmup_s` seconds whose calls are not
counted. Each level reports latency p50/p95/p99/mean (ms), throughput (calls/s) and errors by
status code.

In the same run, two floors:
- compute: the model work of the same requests in this process, no network: ONNX Runtime
  time (plus the ANN search where the artifact has an index) at batch 1 on one thread, and
  the whole in-process pipeline around it;
- echo: a bare gRPC server in its own process (benchmarks/bench_echo_server.py, same
  worker-thread count) answering every request with a real response of the server's (same
  bytes, so the client decodes the same message), driven by the same load generator at the
  same levels.

The floor of one request is compute p50 + `hops` x echo p50 at one client (hops = 2: client
-> inference server -> feature service). Torch-free; matplotlib only for the optional plot.

CPU per call: for each level, the CPU time (user + system, Linux /proc) that each known
process spent during the measured window, divided by the calls answered: this load generator
("client"), the inference server (`server_pid`; or `server_metrics`, its --metrics-port, whose
process_cpu_seconds_total and process_resident_memory_bytes then stand for /proc), the feature
service (`features_pid`) and, for the echo levels, the echo server. With every process on the
same cores, throughput at high concurrency is bounded by the sum of these. A server started with
--processes N hands each connection to one worker: give at least N channels so every worker
gets calls, and `server_metrics` (the supervisor sums CPU over its workers; a pid is one process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from recsys.artifact import (
    HISTORIES,
    ITEMS,
    USERS,
    ItemIndex,
    read_jsonl,
    read_manifest,
)
from recsys.v1 import inference_pb2

__all__ = ["ArtifactFeatures", "BenchConfig", "format_report", "run_bench", "summarise", "write_plot", "write_report"]

RPCS = ("recommend", "score")
ECHO_SERVICE = "recsys.bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"
ROOT = Path(__file__).resolve().parents[1]  # the echo server runs from here (python -m benchmarks...)
DEFAULT_SERVER = "localhost:50052"  # `recsys serve inference`'s default port


@dataclass(frozen=True)
class BenchConfig:
    server: str  # inference server HOST:PORT
    artifact: str  # the artifact it serves (users, items and the model for the compute floor)
    rpc: str = "recommend"  # recommend | score
    k: int = 10  # Recommend k
    candidates: int = 1000  # Score: item ids per request (drawn from the catalogue)
    levels: tuple[int, ...] = (1, 8, 32)  # concurrent clients per level
    duration_s: float = 5.0  # measured seconds per level (ignored when requests > 0)
    requests: int = 0  # measured calls per level; 0 = run for duration_s
    warmup_s: float = 1.0  # unmeasured seconds before each level
    users: int = 1000  # distinct users drawn from the artifact's histories
    seed: int = 0
    timeout_s: float = 5.0  # per call; a call over it counts as an error
    hops: int = 2  # network round trips in one request (Recommend and Score fetch the user)
    echo: bool = True  # measure the echo floor
    compute: bool = True  # measure the in-process compute floor
    server_pid: int = 0  # where known, the server's RSS and CPU per call are reported (Linux /proc)
    server_metrics: str = ""  # HOST:PORT of its --metrics-port: CPU and RSS read there instead of /proc
    features_pid: int = 0  # where known, the feature service's CPU per call is reported
    label: str = ""  # free text carried into the report (e.g. "batching on")
    # Distinct connections the clients share (client i uses channel i % channels): the kernel
    # hands each connection to one worker of a multi-process server, so one channel measures one.
    channels: int = 4

    def check(self) -> None:
        if self.rpc not in RPCS:
            raise ValueError(f"rpc must be one of {', '.join(RPCS)}, got {self.rpc!r}")
        if not self.levels or min(self.levels) < 1:
            raise ValueError("levels must be positive client counts")
        if self.duration_s <= 0 and self.requests <= 0:
            raise ValueError("give a positive duration_s or requests")
        if self.users < 1 or self.k < 1 or self.candidates < 1:
            raise ValueError("users, k and candidates must be >= 1")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")


# -- workload ---------------------------------------------------------------------------


def draw_users(artifact: str | Path, n: int) -> list[str]:
    """The first `n` users of the artifact's histories that have at least one event."""
    rows = read_jsonl(Path(artifact) / HISTORIES)
    users = [r["user_id"] for r in islice((r for r in rows if r["item_ids"]), n)]
    if not users:
        raise ValueError(f"artifact {artifact} has no user with a history to benchmark")
    return users


def build_requests(cfg: BenchConfig, users: list[str], item_ids: tuple[str, ...]) -> list:
    """One request per drawn user, shuffled; Score requests get `candidates` random item ids."""
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(users))
    if cfg.rpc == "recommend":
        return [inference_pb2.RecommendRequest(user_id=users[i], k=cfg.k, exclude_seen=True) for i in order]
    n = min(cfg.candidates, len(item_ids))
    return [
        inference_pb2.ScoreRequest(
            user_id=users[i], item_ids=[item_ids[j] for j in rng.choice(len(item_ids), n, replace=False)]
        )
        for i in order
    ]


def summarise(latencies_ms: list[float], seconds: float, errors: Counter) -> dict[str, Any]:
    """Latency percentiles (ms) of successful calls, throughput (successful calls/s), errors."""
    lat = np.asarray(latencies_ms, dtype=np.float64)
    out: dict[str, Any] = {
        "calls": len(lat),
        "seconds": round(seconds, 3),
        "throughput_per_s": round(len(lat) / seconds, 1) if seconds > 0 else 0.0,
        "errors": int(sum(errors.values())),
        "errors_by_code": dict(errors),
    }
    if len(lat):
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        out.update(
            p50_ms=round(float(p50), 3),
            p95_ms=round(float(p95), 3),
            p99_ms=round(float(p99), 3),
            mean_ms=round(float(lat.mean()), 3),
            max_ms=round(float(lat.max()), 3),
        )
    return out


def process_metrics(endpoint: str) -> dict[str, float] | None:
    """The process_* samples a server exports on its metrics endpoint (HOST:PORT), None if unreachable."""
    url = endpoint if "://" in endpoint else f"http://{endpoint}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    return {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("process_")
    }


def cpu_seconds(pid: int | str) -> float | None:
    """User + system CPU seconds `pid` has used so far (Linux /proc), or the process behind a
    metrics endpoint ("HOST:PORT") has (process_cpu_seconds_total); None if unreadable."""
    if isinstance(pid, str):
        return (process_metrics(pid) or {}).get("process_cpu_seconds_total")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(
    calls: list, requests: list, clients: int, cfg: BenchConfig, cpu_pids: dict[str, int | str] | None = None
) -> dict[str, Any]:
    """`clients` tasks calling back to back (client i on `calls[i % len(calls)]`): warm-up,
    then the measured window."""
    state = {"next": 0, "measuring": False, "stop": False, "count": 0}
    latencies: list[float] = []
    errors: Counter = Counter()

    async def client(call) -> None:
        while not state["stop"]:
            request = requests[state["next"] % len(requests)]
            state["next"] += 1
            start = time.perf_counter()
            try:
                await call(request, timeout=cfg.timeout_s)
                ok = True
            except grpc.aio.AioRpcError as exc:
                ok = False
                code = exc.code().name
            elapsed = (time.perf_counter() - start) * 1000
            if state["measuring"] and not state["stop"]:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[code] += 1
                state["count"] += 1
                if cfg.requests and state["count"] >= cfg.requests:
                    state["stop"] = True

    tasks = [asyncio.create_task(client(calls[i % len(calls)])) for i in range(clients)]
    await asyncio.sleep(cfg.warmup_s)
    pids = {"client": os.getpid(), **{name: pid for name, pid in (cpu_pids or {}).items() if pid}}
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    state["measuring"] = True
    started = time.perf_counter()
    if cfg.requests:
        while not state["stop"] and not all(t.done() for t in tasks):
            await asyncio.sleep(0.01)
    else:
        await asyncio.sleep(cfg.duration_s)
    seconds = time.perf_counter() - started
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    state["stop"] = True
    await asyncio.gather(*tasks)
    out = summarise(latencies, seconds, errors)
    calls = len(latencies) + sum(errors.values())
    if calls:
        out["cpu_ms_per_call"] = {
            name: round((cpu_after[name] - before) * 1000 / calls, 3)
            for name, before in cpu_before.items()
            if before is not None and cpu_after[name] is not None
        }
    return out


async def _levels(
    target: str,
    method: str,
    request_cls,
    response_cls,
    requests: list,
    cfg: BenchConfig,
    cpu_pids: dict[str, int | str] | None = None,
) -> list[dict]:
    results = []
    # A local subchannel pool each, or gRPC would share one connection among them.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(cfg.channels)
    ]
    try:
        calls = [
            channel.unary_unary(
                method, request_serializer=request_cls.SerializeToString, response_deserializer=response_cls.FromString
            )
            for channel in channels
        ]
        for clients in cfg.levels:
            results.append({"clients": clients, **await _drive(calls, requests, clients, cfg, cpu_pids)})
    finally:
        for channel in channels:
            await channel.close()
    return results


# -- floors -----------------------------------------------------------------------------


class ArtifactFeatures:
    """The feature client's interface over the artifact's own files, in memory: what the
    in-process compute floor uses instead of the feature service."""

    def __init__(self, artifact: str | Path, user_ids: list[str]):
        wanted = set(user_ids)
        self.target = f"artifact:{artifact}"
        self.histories = {
            r["user_id"]: r["item_ids"] for r in read_jsonl(Path(artifact) / HISTORIES) if r["user_id"] in wanted
        }
        path = Path(artifact) / USERS
        self.users = (
            {r["user_id"]: r.get("features", {}) for r in read_jsonl(path) if r["user_id"] in wanted}
            if path.is_file()
            else {}
        )
        self._artifact = Path(artifact)
        self._items: dict[str, dict] | None = None

    def get_user(self, user_id: str, max_history: int, timeout_s: float | None = None):
        from inference_server.feature_client import UserView

        history = self.histories.get(user_id)
        found = history is not None or user_id in self.users
        return UserView(user_id, found, tuple((history or [])[-max_history:]), dict(self.users.get(user_id, {})))

    def get_items(self, item_ids):
        if self._items is None:
            path = self._artifact / ITEMS
            self._items = {r["item_id"]: r.get("features", {}) for r in read_jsonl(path)} if path.is_file() else {}
        return {i: self._items[i] for i in item_ids if i in self._items}

    def contract_of(self, contract_hash: str):
        """The artifact's own raw features: what a store loaded from it would serve."""
        return read_manifest(self._artifact).schema.contract()

    def check_compatible(self, needs) -> None:
        pass

    def close(self) -> None:
        pass


class _Timed:
    """Proxy that adds the time spent in `run`/`scores`/`top_k` to `spent_ms`."""

    def __init__(self, inner):
        self.inner = inner
        self.spent_ms = 0.0

    def _timed(self, name):
        method = getattr(self.inner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.spent_ms += (time.perf_counter() - start) * 1000

        return wrapper

    def __getattr__(self, name):
        if name in ("run", "scores", "top_k", "score_items"):
            return self._timed(name)
        return getattr(self.inner, name)


def compute_floor(cfg: BenchConfig, requests: list, users: list[str]) -> dict[str, Any]:
    """Model time (ORT, plus ANN search) and whole-pipeline time per request, in this process,
    on one thread, for the same requests; with an ANN index, also its recall@k against exact."""
    from inference_server.pipeline import Recommender
    from recsys.onnx_session import ModelSession

    manifest = read_manifest(cfg.artifact)
    features = ArtifactFeatures(cfg.artifact, users)
    ann = _load_ann(cfg.artifact, manifest)
    session = _Timed(ModelSession(cfg.artifact, manifest, threads=1)) if ann is None else None
    timed_ann = _Timed(ann) if ann is not None else None
    extra = {"ann": timed_ann} if timed_ann is not None else {}
    recommender = Recommender(
        manifest, ItemIndex.read(cfg.artifact), session if session is not None else ann.encoder, features, **extra
    )
    recommender.warm_up()
    timed = timed_ann if timed_ann is not None else session
    model_ms, pipeline_ms = [], []
    sample = requests[: min(len(requests), 300)]
    for rounds in (0, 1):  # a first unmeasured pass warms caches and shapes
        for request in sample:
            timed.spent_ms = 0.0
            start = time.perf_counter()
            if cfg.rpc == "recommend":
                recommender.recommend(request.user_id, request.k, request.exclude_seen)
            else:
                recommender.score(request.user_id, list(request.item_ids))
            if rounds:
                pipeline_ms.append((time.perf_counter() - start) * 1000)
                model_ms.append(timed.spent_ms)
    out = {"model_ms": summarise(model_ms, 1.0, Counter()), "in_process_ms": summarise(pipeline_ms, 1.0, Counter())}
    for part in out.values():
        part.pop("throughput_per_s"), part.pop("seconds"), part.pop("errors"), part.pop("errors_by_code")
    if ann is not None:
        out["ann"] = {**ann.describe(), f"recall_at_{cfg.k}": ann_recall(ann, recommender, users[:200], cfg.k)}
    return out


def _load_ann(artifact: str, manifest):
    from inference_server.retrieval import Retriever, has_ann

    return Retriever(artifact, manifest, threads=1) if has_ann(artifact) else None


def ann_recall(ann, recommender, users: list[str], k: int) -> float:
    """Mean |ANN top-k ∩ exact top-k| / k over `users` (seen items excluded in both)."""
    hits = total = 0
    for user_id in users:
        user = recommender.features.get_user(user_id, recommender.seen_window)
        window = recommender._window(user)
        seen = recommender._seen(user)
        approx, _ = ann.top_k(window, k, seen)
        exact, _ = ann.exact_top_k(window, k, seen)
        hits += len(set(approx.tolist()) & set(exact.tolist()))
        total += len(exact)
    return round(hits / total, 4) if total else float("nan")


def start_echo_server(response: bytes, workers: int = 8) -> tuple[subprocess.Popen, str]:
    """A bare gRPC server in its own process that answers every call with `response`."""
    import tempfile

    with tempfile.NamedTemporaryFile(delete=False, suffix=".bin") as f:
        f.write(response)
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_echo_server",
        "--workers",
        str(workers),
        "--reply",
        f"{ECHO_SERVICE}/Echo={f.name}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = process.stdout.readline()
    os.unlink(f.name)
    if not line.startswith("port "):
        process.kill()
        process.wait()
        process.stdout.close()
        raise RuntimeError("the echo server did not start")
    return process, f"127.0.0.1:{int(line.split()[1])}"


# -- the run ----------------------------------------------------------------------------


def rss_mib(pid: int) -> dict[str, float] | None:
    """Resident and peak resident memory of `pid` in MiB (Linux)."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
    except OSError:
        return None
    return {
        key: round(int(fields[name].split()[0]) / 1024, 1)
        for key, name in (("rss_mib", "VmRSS"), ("peak_rss_mib", "VmHWM"))
        if name in fields
    }


def server_memory(cfg: BenchConfig) -> dict[str, float] | None:
    """The server's RSS from its metrics endpoint where given and reachable (plus the peak from
    /proc where its pid is known too), else from /proc."""
    scraped = process_metrics(cfg.server_metrics) if cfg.server_metrics else None
    rss = (scraped or {}).get("process_resident_memory_bytes")
    from_proc = rss_mib(cfg.server_pid) if cfg.server_pid else None
    if rss is None:
        return from_proc
    return {**(from_proc or {}), "rss_mib": round(rss / 2**20, 1)}


def run_bench(cfg: BenchConfig, log=print) -> dict[str, Any]:
    """Runs the floors and the levels; returns the report (see the module docstring)."""
    cfg.check()
    index = ItemIndex.read(cfg.artifact)
    users = draw_users(cfg.artifact, cfg.users)
    requests = build_requests(cfg, users, index.item_ids)
    if cfg.rpc == "recommend":
        method, req_cls, resp_cls = (
            "/recsys.v1.InferenceService/Recommend",
            inference_pb2.RecommendRequest,
            inference_pb2.RecommendResponse,
        )
    else:
        method, req_cls, resp_cls = (
            "/recsys.v1.InferenceService/Score",
            inference_pb2.ScoreRequest,
            inference_pb2.ScoreResponse,
        )
    report: dict[str, Any] = {"config": {**asdict(cfg), "levels": list(cfg.levels)}, "machine": _machine()}
    with grpc.insecure_channel(cfg.server) as channel:  # one real call: the response the echo returns
        sample = channel.unary_unary(
            method, request_serializer=req_cls.SerializeToString, response_deserializer=resp_cls.FromString
        )(requests[0], timeout=cfg.timeout_s)
    report["request_bytes"] = requests[0].ByteSize()
    report["response_bytes"] = sample.ByteSize()
    report["model_version"] = sample.model_version
    if cfg.compute:
        log("compute floor (in process, one thread) ...")
        report["compute"] = compute_floor(cfg, requests, users)
    log(f"server {cfg.server}: levels {list(cfg.levels)} ...")
    report["levels"] = asyncio.run(
        _levels(
            cfg.server,
            method,
            req_cls,
            resp_cls,
            requests,
            cfg,
            {"server": cfg.server_metrics or cfg.server_pid, "features": cfg.features_pid},
        )
    )
    if cfg.server_pid or cfg.server_metrics:
        report["server_memory"] = server_memory(cfg)
    if cfg.echo:
        log("echo floor ...")
        process, target = start_echo_server(sample.SerializeToString())
        try:
            echo = asyncio.run(_levels(target, ECHO_METHOD, req_cls, resp_cls, requests, cfg, {"echo": process.pid}))
        finally:
            process.kill()
            process.wait()
            process.stdout.close()
        for level, e in zip(report["levels"], echo):
            level["echo"] = {k: v for k, v in e.items() if k != "clients"}
    report["floor"] = floor_of(report, cfg.hops)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    return report


def floor_of(report: dict[str, Any], hops: int) -> dict[str, Any]:
    """compute p50 + hops x echo p50 at the smallest level, and how far the server is from it."""
    out: dict[str, Any] = {"hops": hops}
    first = report["levels"][0]
    echo = first.get("echo", {}).get("p50_ms")
    model = report.get("compute", {}).get("model_ms", {}).get("p50_ms")
    if echo is not None and model is not None:
        out["floor_p50_ms"] = round(model + hops * echo, 3)
        if "p50_ms" in first:
            out["server_p50_over_floor"] = round(first["p50_ms"] / out["floor_p50_ms"], 2)
    for level in report["levels"]:
        if level.get("echo", {}).get("throughput_per_s"):
            level["throughput_vs_echo"] = round(level["throughput_per_s"] / level["echo"]["throughput_per_s"], 3)
    return out


def _machine() -> dict[str, Any]:
    import onnxruntime

    return {
        "cpus": os.cpu_count(),
        "load_average_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "onnxruntime": onnxruntime.__version__,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_plot(reports: list[dict[str, Any]], path: str | Path) -> bool:
    """Latency (p50 solid, p99 dashed) against throughput, one line per report and its echo
    floor; False (and no file) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for report in reports:
        name = report["config"].get("label") or f"{report['config']['rpc']}"
        for key, series, style in (
            ("server", report["levels"], "-"),
            ("echo", [lv.get("echo") for lv in report["levels"]], ":"),
        ):
            series = [s for s in series if s and "p50_ms" in s]
            if not series:
                continue
            label = name if key == "server" else f"echo ({name})"
            x = [s["throughput_per_s"] for s in series]
            (line,) = ax.plot(x, [s["p50_ms"] for s in series], style, marker="o", label=f"{label} p50")
            ax.plot(x, [s["p99_ms"] for s in series], "--", color=line.get_color(), marker="x", label=f"{label} p99")
    ax.set_xlabel("throughput (calls/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("recsys load: latency vs throughput (points = concurrency levels)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(reports: list[dict[str, Any]], out_dir: str | Path, name: str = "bench") -> tuple[Path, Path | None]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    png = out / f"{name}.png"
    return json_path, png if write_plot(reports, png) else None


def format_report(report: dict[str, Any]) -> str:
    lines = [
        (
            f"{report['config']['rpc']} on {report['config']['server']} ({report.get('model_version', '?')})"
            f"{' [' + report['config']['label'] + ']' if report['config'].get('label') else ''}"
        )
    ]
    if "compute" in report:
        c = report["compute"]
        lines.append(
            f"  compute floor: model p50 {c['model_ms'].get('p50_ms')} ms, in-process pipeline p50 "
            f"{c['in_process_ms'].get('p50_ms')} ms" + (f", ANN recall {c['ann']}" if "ann" in c else "")
        )
    floor = report.get("floor", {})
    if "floor_p50_ms" in floor:
        lines.append(
            f"  floor p50 {floor['floor_p50_ms']} ms (compute + {floor['hops']} echo round trips); "
            f"server p50 / floor = {floor.get('server_p50_over_floor')}"
        )
    lines.append(
        f"  {'clients':>7} {'p50':>8} {'p95':>8} {'p99':>8} {'calls/s':>9} {'errors':>6} | {'echo p50':>8} {'echo/s':>8} {'vs echo':>7}"
    )
    for lv in report["levels"]:
        e = lv.get("echo", {})
        lines.append(
            f"  {lv['clients']:>7} {lv.get('p50_ms', '-'):>8} {lv.get('p95_ms', '-'):>8} {lv.get('p99_ms', '-'):>8} "
            f"{lv['throughput_per_s']:>9} {lv['errors']:>6} | {e.get('p50_ms', '-'):>8} {e.get('throughput_per_s', '-'):>8} "
            f"{lv.get('throughput_vs_echo', '-'):>7}"
        )
    for lv in report["levels"]:
        cpu = {
            **lv.get("cpu_ms_per_call", {}),
            **{f"echo {k}": v for k, v in lv.get("echo", {}).get("cpu_ms_per_call", {}).items()},
        }
        if cpu:
            lines.append(
                f"  CPU ms per call at {lv['clients']} clients: " + ", ".join(f"{k} {v}" for k, v in cpu.items())
            )
    if report.get("server_memory"):
        lines.append(f"  server memory: {report['server_memory']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parses the flags, runs one benchmark, prints the report (and writes NAME.json/.png under --out)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=DEFAULT_SERVER, help="inference server HOST:PORT")
    parser.add_argument(
        "--artifact",
        required=True,
        help="the artifact the server serves: users to draw, and the model for the compute floor",
    )
    parser.add_argument("--rpc", default="recommend", choices=RPCS)
    parser.add_argument("--k", type=int, default=10, help="Recommend k")
    parser.add_argument("--candidates", type=int, default=1000, help="Score: item ids per request")
    parser.add_argument("--levels", default="1,8,32", help="comma-separated concurrent client counts")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per level")
    parser.add_argument(
        "--requests", type=int, default=0, help="measured calls per level instead of --duration (0 = use --duration)"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    parser.add_argument("--users", type=int, default=1000, help="users drawn from the artifact")
    parser.add_argument("--no-echo", action="store_true", help="skip the echo floor")
    parser.add_argument("--no-compute", action="store_true", help="skip the in-process compute floor")
    parser.add_argument(
        "--server-pid",
        type=int,
        default=0,
        help="report this process's RSS and CPU per call (the server's, on this machine)",
    )
    parser.add_argument(
        "--server-metrics",
        default="",
        help="the server's --metrics-port as HOST:PORT: its CPU per call and RSS read there (else --server-pid's /proc)",
    )
    parser.add_argument(
        "--features-pid", type=int, default=0, help="report this process's CPU per call (the feature service's)"
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=4,
        help="distinct connections the clients share (one reaches one worker of a --processes N server)",
    )
    parser.add_argument("--label", default="", help="name of this run in the report and plot")
    parser.add_argument("--out", help="write NAME.json and NAME.png here")
    parser.add_argument("--name", default="bench", help="file name stem under --out")
    args = parser.parse_args(argv)
    if not Path(args.artifact).is_dir():
        parser.error(f"--artifact {args.artifact}: no such directory")
    try:
        levels = tuple(int(x) for x in args.levels.split(",") if x.strip())
    except ValueError:
        parser.error("--levels: comma-separated integers, e.g. 1,8,32")
    cfg = BenchConfig(
        server=args.server,
        artifact=args.artifact,
        rpc=args.rpc,
        k=args.k,
        candidates=args.candidates,
        levels=levels,
        duration_s=args.duration,
        requests=args.requests,
        warmup_s=args.warmup,
        users=args.users,
        echo=not args.no_echo,
        compute=not args.no_compute,
        server_pid=args.server_pid,
        server_metrics=args.server_metrics,
        features_pid=args.features_pid,
        label=args.label,
        channels=args.channels,
    )
    try:
        report = run_bench(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    except ValueError as exc:
        parser.exit(1, f"error: {exc}\n")
    print(format_report(report))
    if args.out:
        json_path, png = write_report([report], args.out, args.name)
        print(f"wrote {json_path}" + (f" and {png}" if png else " (no plot: matplotlib is not installed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
