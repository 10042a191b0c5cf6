"""Metrics stock dashboards understand: the go-grpc-prometheus names and labels, process
metrics, the model-run and batching-queue histograms, stream-budget shedding, and a Grafana
dashboard whose every query names a metric a running server exports."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from feature_service.server import create_feature_server
from inference_server.repository import ModelRepository
from inference_server.server import start_inference_service
from inference_server.speed import SpeedOptions
from recsys.grpc_server import create_server
from recsys.metrics import ServiceMetrics
from recsys.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc

DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "recsys-dashboard.json"
RECOMMEND = {"grpc_type": "unary", "grpc_service": "recsys.v1.InferenceService", "grpc_method": "Recommend"}


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} from a server's metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def declared(port: int) -> set[str]:
    """Every series name a server declares, samples or not yet (a labelled counter that has not
    counted shows only its HELP and TYPE lines)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        families = list(text_string_to_metric_families(reply.read().decode()))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names = {s.name for f in families for s in f.samples}
    names |= {f.name + end for f in families for end in suffixes.get(f.type, ("",))}
    return names


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str) -> float:
    """The sum over every label set of `name` (e.g. a histogram's count over model versions)."""
    return sum(v for (n, _), v in samples.items() if n == name)


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def servers(trained_artifact, tmp_path):
    """A feature server and an inference server over a one-version repository, both with
    metrics; the inference server micro-batches (so its queue is timed)."""
    fserver, fport, _, fcore = create_feature_server(
        trained_artifact, "memory://", host="127.0.0.1", metrics_port=0, metrics_host="127.0.0.1"
    )
    repo = ModelRepository(tmp_path / "repo")
    repo.publish(trained_artifact, "m")
    service = start_inference_service(
        None,
        f"127.0.0.1:{fport}",
        repo=repo.root,
        model="m",
        watch_interval_s=0,
        host="127.0.0.1",
        metrics_port=0,
        metrics_host="127.0.0.1",
        speed=SpeedOptions(batch_max=4, batch_wait_us=200),
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
    yield {
        "repo": repo,
        "service": service,
        "fcore": fcore,
        "channel": channel,
        "infer": inference_pb2_grpc.InferenceServiceStub(channel),
    }
    channel.close()
    service.stop()
    fserver.stop(None)
    fcore.close()


def test_calls_show_under_the_standard_grpc_names_and_labels(servers):
    infer = servers["infer"]
    for _ in range(2):
        infer.Recommend(inference_pb2.RecommendRequest(user_id="u001", k=3), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        infer.Recommend(inference_pb2.RecommendRequest(user_id="", k=3), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    got = scrape(servers["service"].metrics_port)
    assert value(got, "grpc_server_started_total", **RECOMMEND) == 3
    assert value(got, "grpc_server_handled_total", **RECOMMEND, grpc_code="OK") == 2
    assert value(got, "grpc_server_handled_total", **RECOMMEND, grpc_code="INVALID_ARGUMENT") == 1
    assert value(got, "grpc_server_handling_seconds_count", **RECOMMEND) == 3
    assert value(got, "grpc_server_handling_seconds_bucket", **RECOMMEND, le="+Inf") == 3
    assert value(got, "grpc_server_msg_received_total", **RECOMMEND) == 3
    assert value(got, "grpc_server_msg_sent_total", **RECOMMEND) == 2
    assert value(got, "recsys_grpc_in_flight") == 0

    # The inference server's feature fetches, seen by the feature service under the same names.
    fgot = scrape(servers["fcore"].metrics_port)
    fetch = {"grpc_type": "unary", "grpc_service": "recsys.v1.FeatureService", "grpc_method": "GetUserFeatures"}
    assert value(fgot, "grpc_server_handled_total", **fetch, grpc_code="OK") >= 2


def test_both_servers_export_process_metrics(servers):
    for port in (servers["service"].metrics_port, servers["fcore"].metrics_port):
        got = scrape(port)
        assert value(got, "process_cpu_seconds_total") > 0
        assert value(got, "process_resident_memory_bytes") > 10 * 2**20
        assert value(got, "process_open_fds") > 0
        assert 0 < time.time() - value(got, "process_start_time_seconds") < 24 * 3600
        assert any(name == "python_info" for name, _ in got)


def test_model_runs_and_batch_queue_waits_are_timed_per_call(servers):
    before = scrape(servers["service"].metrics_port)
    for user in ("u001", "u002", "u003"):
        servers["infer"].Recommend(inference_pb2.RecommendRequest(user_id=user, k=3), timeout=5)
    got = scrape(servers["service"].metrics_port)
    # Sequential calls: one ONNX Runtime run each (warm-ups before serving are not counted).
    assert total(got, "recsys_model_run_seconds_count") - total(before, "recsys_model_run_seconds_count") == 3
    assert total(got, "recsys_batch_queue_seconds_count") - total(before, "recsys_batch_queue_seconds_count") == 3
    labels = {dict(k).get("model_version") for (n, k) in got if n == "recsys_model_run_seconds_count"}
    version = servers["service"].recommender.manifest.model_version
    assert labels == {version}
    assert 0 < value(got, "recsys_model_run_seconds_sum", model_version=version) < 3.0


def test_stream_budget_shedding_shows_as_resource_exhausted():
    metrics = ServiceMetrics()
    server, port, health = create_server([], host="127.0.0.1", interceptors=[metrics.interceptor()], max_streams=1)
    watch = {"grpc_type": "server_stream", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Watch"}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            first = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert next(first).status == health_pb2.HealthCheckResponse.NOT_SERVING  # holds the one slot
            with pytest.raises(grpc.RpcError) as info:
                next(stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            first.cancel()
            samples = lambda: {  # noqa: E731
                (s.name, frozenset(s.labels.items())): s.value
                for f in text_string_to_metric_families(metrics.render().decode())
                for s in f.samples
            }
            wait_for(lambda: value(samples(), "grpc_server_handled_total", **watch, grpc_code="CANCELLED") == 1)
        got = samples()
    finally:
        server.stop(None)
    assert value(got, "grpc_server_started_total", **watch) == 2
    assert value(got, "grpc_server_handled_total", **watch, grpc_code="RESOURCE_EXHAUSTED") == 1
    assert value(got, "recsys_shed_total", reason="stream_budget") == 1
    assert value(got, "grpc_server_msg_sent_total", **watch) >= 1
    check = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    assert value(got, "grpc_server_handled_total", **check, grpc_code="OK") == 1


# Words in PromQL that are not metric names.
PROMQL = {
    "sum", "rate", "irate", "increase", "by", "without", "histogram_quantile", "le", "max", "min", "avg",
    "clamp_min", "on", "ignoring", "group_left", "count", "topk", "time", "and", "or", "unless",
}  # fmt: skip


def dashboard_metrics() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    names = set()
    for expr in exprs:
        expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
        expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
        expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
        names |= {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w not in PROMQL}
    return names


def test_dashboard_queries_only_metrics_a_running_server_exports(servers, trained_artifact):
    servers["repo"].publish(trained_artifact, "m")  # a candidate, so the rollout metrics exist
    admin = admin_pb2_grpc.AdminServiceStub(servers["channel"])
    admin.StartRollout(admin_pb2.StartRolloutRequest(version=2, fraction=0.5), timeout=30)
    for user in ("u001", "u002", "u003", "u004"):
        servers["infer"].Recommend(inference_pb2.RecommendRequest(user_id=user, k=3), timeout=5)
    with pytest.raises(grpc.RpcError):
        servers["infer"].Recommend(inference_pb2.RecommendRequest(user_id="", k=3), timeout=5)
    exported = declared(servers["service"].metrics_port) | declared(servers["fcore"].metrics_port)
    wanted = dashboard_metrics()
    assert "grpc_server_handled_total" in wanted and "process_resident_memory_bytes" in wanted
    assert wanted <= exported, sorted(wanted - exported)


def test_load_benchmark_reads_cpu_and_rss_from_the_metrics_endpoint():
    from benchmarks.load import BenchConfig, cpu_seconds, server_memory

    metrics = ServiceMetrics()
    port = metrics.serve_http(0, "127.0.0.1")
    endpoint = f"127.0.0.1:{port}"
    try:
        assert cpu_seconds(endpoint) == pytest.approx(cpu_seconds(os.getpid()), abs=0.5)
        memory = server_memory(BenchConfig(server="-", artifact="-", server_metrics=endpoint))
        assert memory["rss_mib"] > 10 and "peak_rss_mib" not in memory
        both = server_memory(BenchConfig(server="-", artifact="-", server_metrics=endpoint, server_pid=os.getpid()))
        assert both["peak_rss_mib"] >= both["rss_mib"] * 0.9
    finally:
        metrics.close()
    # Unreachable endpoint: /proc where the pid is known, else nothing.
    assert cpu_seconds(endpoint) is None
    assert server_memory(BenchConfig(server="-", artifact="-", server_metrics=endpoint, server_pid=os.getpid()))


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _interceptor(name: str):
    from recsys.errors import ErrorMappingInterceptor
    from recsys.grpc_server import StreamBudget
    from recsys.security import TokenAuthInterceptor

    return {
        "metrics": lambda: ServiceMetrics().interceptor(),
        "errors": ErrorMappingInterceptor,
        "stream_budget": lambda: StreamBudget(1),
        "token_refusal": lambda: TokenAuthInterceptor({"t"}),  # no token sent: the refusing twin
    }[name]()


@pytest.mark.parametrize(
    "name, make",
    [
        ("metrics", grpc.unary_unary_rpc_method_handler),
        ("metrics", grpc.unary_stream_rpc_method_handler),
        ("errors", grpc.unary_unary_rpc_method_handler),
        ("stream_budget", grpc.unary_stream_rpc_method_handler),
        ("token_refusal", grpc.unary_unary_rpc_method_handler),
    ],
)
def test_each_method_is_wrapped_once_while_its_handler_stays_the_same(name, make):
    """The wrapped handler is built on a method's first call and reused; another method gets
    its own; a handler that changes beneath (another servicer registered) is wrapped anew; an
    unknown method passes as None."""
    interceptor = _interceptor(name)
    first, second = make(lambda *_: None), make(lambda *_: None)
    beneath = {"/s.S/A": first, "/s.S/B": first}

    def intercept(method: str):
        return interceptor.intercept_service(lambda d: beneath.get(d.method), _Details(method))

    wrapped_a = intercept("/s.S/A")
    assert wrapped_a is not first and intercept("/s.S/A") is wrapped_a
    wrapped_b = intercept("/s.S/B")
    assert wrapped_b is not wrapped_a and intercept("/s.S/B") is wrapped_b
    beneath["/s.S/A"] = second
    rewrapped = intercept("/s.S/A")
    assert rewrapped is not wrapped_a and rewrapped is not second and intercept("/s.S/A") is rewrapped
    assert intercept("/s.S/None") is None
