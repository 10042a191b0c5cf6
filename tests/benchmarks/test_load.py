"""The load generator (benchmarks/load.py) against real in-process servers: every level is
measured, the floors are in the same report, the JSON and the plot are written. No speed is
asserted (benchmarks, not timed tests)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import Counter
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2

from benchmarks.load import (
    BenchConfig,
    _levels,
    format_report,
    main,
    run_bench,
    summarise,
    write_report,
)
from feature_service.server import create_feature_server
from inference_server.server import create_inference_server
from inference_server.speed import SpeedOptions


def test_summary_percentiles_throughput_and_errors_by_hand():
    out = summarise([1.0, 2.0, 3.0, 4.0, 5.0], 2.0, Counter({"UNAVAILABLE": 2}))
    assert out["calls"] == 5 and out["throughput_per_s"] == 2.5
    assert out["p50_ms"] == 3.0 and out["max_ms"] == 5.0 and out["mean_ms"] == 3.0
    assert out["errors"] == 2 and out["errors_by_code"] == {"UNAVAILABLE": 2}


@pytest.mark.parametrize(
    "bad",
    [{"rpc": "delete"}, {"levels": ()}, {"levels": (0,)}, {"duration_s": 0, "requests": 0}, {"k": 0}, {"channels": 0}],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        BenchConfig(server="x", artifact="y", **bad).check()


@pytest.fixture(params=[0, 4], ids=["plain", "batched"])
def served(request, trained_artifact):
    fserver, fport, _, fcore = create_feature_server(trained_artifact, "memory://")
    iserver, iport, _, recommender = create_inference_server(
        trained_artifact, f"localhost:{fport}", speed=SpeedOptions(batch_max=request.param)
    )
    yield f"localhost:{iport}", request.param
    iserver.stop(None)
    recommender.features.close()
    fserver.stop(None)
    fcore.close()


@pytest.mark.parametrize("rpc", ["recommend", "score"])
def test_bench_reports_levels_and_both_floors(served, trained_artifact, rpc, tmp_path):
    target, batch = served
    cfg = BenchConfig(
        server=target,
        artifact=str(trained_artifact),
        rpc=rpc,
        candidates=7,
        levels=(1, 3),
        duration_s=0.3,
        warmup_s=0.1,
        users=10,
        label=f"batch {batch}",
        server_pid=os.getpid(),
    )
    report = run_bench(cfg, log=lambda *_: None)
    assert [lv["clients"] for lv in report["levels"]] == [1, 3]
    for level in report["levels"]:
        assert level["calls"] > 0 and level["errors"] == 0
        assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"] <= level["max_ms"]
        assert level["echo"]["calls"] > 0 and level["echo"]["errors"] == 0
        assert level["throughput_vs_echo"] > 0
        # CPU per call of each known process (the servers run in this one here); the echo's own
        assert set(level["cpu_ms_per_call"]) == {"client", "server"} and level["cpu_ms_per_call"]["server"] > 0
        assert set(level["echo"]["cpu_ms_per_call"]) == {"client", "echo"}
    assert report["response_bytes"] > 0 and report["model_version"].startswith("sasrec-")
    assert 0 < report["compute"]["model_ms"]["p50_ms"] <= report["compute"]["in_process_ms"]["p50_ms"]
    floor = report["floor"]
    assert floor["hops"] == 2 and floor["floor_p50_ms"] > report["compute"]["model_ms"]["p50_ms"]
    assert "clients" in format_report(report)
    json_path, png = write_report([report], tmp_path, "run")
    assert json.loads(json_path.read_text())["config"]["rpc"] == rpc
    assert png is not None and png.stat().st_size > 1000


def test_the_command_line_runs_one_benchmark_and_writes_its_report(served, trained_artifact, tmp_path, capsys):
    target, _ = served
    assert (
        main(
            [
                "--server",
                target,
                "--artifact",
                str(trained_artifact),
                "--levels",
                "1,2",
                "--duration",
                "0.2",
                "--warmup",
                "0.05",
                "--users",
                "5",
                "--no-echo",
                "--no-compute",
                "--out",
                str(tmp_path),
                "--name",
                "cli",
                "--label",
                "from the CLI",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "cli.json").read_text())
    assert [lv["clients"] for lv in report["levels"]] == [1, 2] and "compute" not in report
    assert report["config"]["label"] == "from the CLI" and "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [["--levels", "1,x"], ["--rpc", "delete"], ["--artifact", "/no/such/dir"]])
def test_the_command_line_refuses_bad_flags(bad, trained_artifact):
    with pytest.raises(SystemExit) as exc:
        main(["--artifact", str(trained_artifact), *bad])
    assert exc.value.code == 2


@pytest.mark.parametrize("channels", [1, 3])
def test_clients_spread_over_distinct_connections(channels):
    """Each channel is its own connection (its own client port), so a multi-process server
    sees every worker's share; the clients all make calls."""
    peers: Counter = Counter()
    lock = threading.Lock()

    def answer(_request, context):
        with lock:
            peers[context.peer()] += 1
        return health_pb2.HealthCheckResponse()

    handler = grpc.method_handlers_generic_handler(
        "t.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                answer,
                request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("localhost:0")
    server.start()
    try:
        cfg = BenchConfig(
            server="x", artifact="y", levels=(6,), duration_s=0.3, warmup_s=0.05, channels=channels, timeout_s=2.0
        )
        requests = [health_pb2.HealthCheckRequest()]
        (level,) = asyncio.run(
            _levels(
                f"localhost:{port}",
                "/t.Echo/Echo",
                health_pb2.HealthCheckRequest,
                health_pb2.HealthCheckResponse,
                requests,
                cfg,
            )
        )
    finally:
        server.stop(None)
    assert level["calls"] > 0 and level["errors"] == 0
    assert len(peers) == channels
