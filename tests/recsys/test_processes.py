"""Several processes on one port (`recsys.processes`): both workers answer, the port is guarded,
health waits for every worker, a published version reaches every worker, the supervisor's
metrics sum the workers, a dead worker is restarted, and SIGTERM drains and exits 0."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from feature_service.server import create_feature_server
from recsys.client import free_port, wait_serving
from recsys.grpc_server import create_server, set_serving
from recsys.metrics import WORKER_HEADER
from recsys.processes import (
    NOT_SERVING,
    SERVING,
    STARTING,
    WorkerSlot,
    reserve_port,
    resolve_processes,
    threads_per_process,
)
from recsys.v1 import admin_pb2, admin_pb2_grpc, features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc

RECSYS = [sys.executable, "-m", "recsys.cli"]
SERVING_STATUS = health_pb2.HealthCheckResponse.SERVING


def wait_for(predicate, timeout_s: float = 30.0, step_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(step_s)
    raise AssertionError(f"not true within {timeout_s} s: {predicate}")


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return -1


def recommend(target: str) -> tuple[str, str]:
    """(answering worker, model version) of one Recommend on a fresh connection: the kernel
    hands each new connection to one of the workers."""
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        reply, call = stub.Recommend.with_call(inference_pb2.RecommendRequest(user_id="u1", k=3), timeout=10)
    return dict(call.initial_metadata())[WORKER_HEADER], reply.model_version


def metric(metrics_port: int, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`, from a metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def handled(metrics_port: int, method: str) -> float:
    return metric(metrics_port, "grpc_server_handled_total", grpc_method=method)


def worker_pids(log: Path) -> list[int]:
    """The pids of the workers, by index, from the supervisor's log (restarts included)."""
    text = log.read_text()
    pids = [int(pid) for pid in re.search(r"workers serving on \S+ \(pids ([\d, ]+)\)", text)[1].split(", ")]
    for index, pid in re.findall(r"worker (\d+) \(pid \d+\) exited .*: restarted as pid (\d+)", text):
        pids[int(index)] = int(pid)
    return pids


# -- the pieces ------------------------------------------------------------------------------


def test_process_count_and_threads_per_process():
    assert resolve_processes(3) == 3
    assert resolve_processes(None, single="a memory:// store lives in one process") == 1
    assert 1 <= resolve_processes(None) <= 8
    with pytest.raises(ValueError, match="memory://"):
        resolve_processes(2, single="a memory:// store lives in one process")
    with pytest.raises(ValueError, match=">= 1"):
        resolve_processes(0)
    assert threads_per_process(4, 2, cores=8) == 4
    assert threads_per_process(4, 4, cores=8) == 2
    assert threads_per_process(1, 16, cores=8) == 1  # never 0


def test_a_busy_port_is_refused_and_a_reserved_one_stays_refused():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="busy"):
            reserve_port("127.0.0.1", taken.getsockname()[1])
    held, port = reserve_port("127.0.0.1", 0)
    try:
        assert port > 0
        with pytest.raises(OSError, match="busy"):  # a second supervisor on the same port
            reserve_port("127.0.0.1", port)
        with pytest.raises(OSError, match="could not bind"):  # a single-process server too
            create_server([], host="127.0.0.1", port=port)
        # ... while the supervisor's own workers join it
        server, bound, _ = create_server([], host="127.0.0.1", port=port, reuse_port=True)
        assert bound == port
        server.stop(None)
    finally:
        for sock in held:
            sock.close()


def test_health_is_serving_only_while_every_worker_is():
    board = [STARTING, STARTING, SERVING]  # two workers, then the supervisor (announced)
    server, port, health_servicer = create_server(
        [], host="127.0.0.1", port=0, reuse_port=True, peers=WorkerSlot(board, 0)
    )
    target = f"127.0.0.1:{port}"
    try:
        assert board[0] == STARTING  # NOT_SERVING before its first SERVING is still starting
        set_serving(health_servicer, [], serving=True)
        assert board[0] == SERVING
        assert health(target) == health_pb2.HealthCheckResponse.NOT_SERVING  # the other one is starting
        board[1] = SERVING
        wait_for(lambda: health(target) == SERVING_STATUS)
        board[1] = NOT_SERVING
        wait_for(lambda: health(target) == health_pb2.HealthCheckResponse.NOT_SERVING)
        board[1] = SERVING
        wait_for(lambda: health(target) == SERVING_STATUS)
        set_serving(health_servicer, [], serving=False)  # its own state counts too
        assert board[0] == NOT_SERVING and health(target) == health_pb2.HealthCheckResponse.NOT_SERVING
        set_serving(health_servicer, [], serving=True)
        wait_for(lambda: health(target) == SERVING_STATUS)
        board[2] = STARTING  # the supervisor has not announced the port yet
        wait_for(lambda: health(target) == health_pb2.HealthCheckResponse.NOT_SERVING)
        health_servicer.enter_graceful_shutdown()  # takes the same lock as the refresh: no deadlock
    finally:
        server.stop(None)


# -- two inference workers over a model repository -------------------------------------------


@pytest.fixture(scope="module")
def two_workers(trained_artifact, tmp_path_factory):
    """`recsys serve inference --processes 2` over a repository holding version 1."""
    directory = tmp_path_factory.mktemp("processes")
    repo = directory / "repo"
    shutil.copytree(trained_artifact, repo / "m" / "1")
    server, fport, _, core = create_feature_server(trained_artifact, "memory://", host="127.0.0.1")
    port, metrics_port = free_port(), free_port()
    log = directory / "inference.log"
    command = [
        *RECSYS, "serve", "inference", "--repo", str(repo), "--model", "m", "--features", f"127.0.0.1:{fport}",
        "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port), "--processes", "2",
        "--watch-interval", "0.5",
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target, process, timeout_s=90)
        yield {"target": target, "port": port, "metrics_port": metrics_port, "repo": repo, "log": log}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        server.stop(None)
        core.close()


def test_both_workers_answer_on_one_port_and_the_metrics_sum_them(two_workers):
    before = handled(two_workers["metrics_port"], "Recommend")
    workers = []
    while len(set(workers)) < 2 and len(workers) < 60:
        workers.append(recommend(two_workers["target"])[0])
    assert set(workers) == {"0", "1"}
    # every worker's calls count, once, on the supervisor's endpoint
    assert handled(two_workers["metrics_port"], "Recommend") - before == len(workers)
    # process_* sums the supervisor and both workers
    rss = sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) for pid in worker_pids(two_workers["log"]))
    assert metric(two_workers["metrics_port"], "process_resident_memory_bytes") > 0.9 * rss * os.sysconf("SC_PAGESIZE")
    wait_for(lambda: "listening on 127.0.0.1:" in two_workers["log"].read_text(), 5)
    assert (
        f":{two_workers['port']} (2 processes, metrics on :{two_workers['metrics_port']})"
        in two_workers["log"].read_text()
    )


def test_a_second_server_on_the_same_port_is_refused(two_workers, trained_artifact):
    directory = two_workers["repo"].parent
    for processes, store in (("2", f"sqlite://{directory}/busy.sqlite"), ("1", "memory://")):
        command = [
            *RECSYS, "serve", "features", "--artifact", str(trained_artifact), "--store", store,
            "--host", "127.0.0.1", "--port", str(two_workers["port"]), "--processes", processes,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert "busy" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_admin_calls_that_would_change_one_worker_are_refused(two_workers):
    with grpc.insecure_channel(two_workers["target"]) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.LoadModelVersion(admin_pb2.LoadModelVersionRequest(version=1), timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "2 processes" in refused.value.details() and "repository" in refused.value.details()
        assert stub.GetModelStatus(admin_pb2.GetModelStatusRequest(), timeout=10).serving_version >= 1


def test_a_published_version_is_served_by_every_worker(two_workers):
    staging = two_workers["repo"] / "m" / ".incoming"
    shutil.copytree(two_workers["repo"] / "m" / "1", staging)
    staging.rename(two_workers["repo"] / "m" / "2")
    seen: dict[str, str] = {}

    def both_on_version_2() -> bool:
        worker, version = recommend(two_workers["target"])
        seen[worker] = version
        return len(seen) == 2 and all(v.startswith("m/2:") for v in seen.values())

    wait_for(both_on_version_2, 90)
    # gauges combine over the workers: the version any worker serves is 1, the one none serves 0
    port = two_workers["metrics_port"]
    assert metric(port, "recsys_model_serving_version") == 2
    assert metric(port, "recsys_model_info", version="2") == 1 and metric(port, "recsys_model_info", version="1") == 0
    assert metric(port, "recsys_model_swaps_total", outcome="swapped") >= 4  # 1 then 2, in each worker


def test_a_dead_worker_is_restarted_and_health_waits_for_it(two_workers):
    target, log = two_workers["target"], two_workers["log"]
    victim = worker_pids(log)[1]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: health(target) == health_pb2.HealthCheckResponse.NOT_SERVING, 10, 0.02)
    wait_for(lambda: worker_pids(log)[1] != victim, 10)
    wait_for(lambda: health(target) == SERVING_STATUS, 90)
    assert f"worker 1 (pid {victim}) exited (exit code -9): restarted as pid" in log.read_text()
    workers = {recommend(target)[0] for _ in range(60)}
    assert workers == {"0", "1"}


# -- two feature workers: SIGTERM ------------------------------------------------------------


def test_sigterm_drains_every_worker_and_exits_0(trained_artifact, tmp_path):
    port = free_port()
    command = [
        *RECSYS, "serve", "features", "--artifact", str(trained_artifact), "--store",
        f"sqlite://{tmp_path}/f.sqlite", "--host", "127.0.0.1", "--port", str(port), "--processes", "2",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target, process, timeout_s=90)
        workers = set()
        for _ in range(60):
            with grpc.insecure_channel(target) as channel:
                stub = features_pb2_grpc.FeatureServiceStub(channel)
                _, call = stub.GetSchema.with_call(features_pb2.GetSchemaRequest(), timeout=10)
            workers.add(dict(call.initial_metadata())[WORKER_HEADER])
            if len(workers) == 2:
                break
        assert workers == {"0", "1"}
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert f"feature service listening on 127.0.0.1:{port} (2 processes)" in output
    assert output.count("draining for up to") >= 2 and "feature service: stopped" in output
    with socket.socket() as free:  # nothing holds the port any more
        free.bind(("127.0.0.1", port))


def test_a_worker_that_cannot_start_stops_the_server_with_its_error_in_one_line(trained_artifact, tmp_path):
    from click.testing import CliRunner

    from recsys.artifact import MODEL
    from recsys.cli import main

    artifact = tmp_path / "artifact"
    shutil.copytree(trained_artifact, artifact)
    (artifact / MODEL).write_bytes(b"not a model")  # its checksum no longer matches
    result = CliRunner().invoke(
        main,
        ["serve", "inference", "--artifact", str(artifact), "--features", "127.0.0.1:1", "--port", "0",
         "--processes", "2"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert "model.onnx" in result.output
