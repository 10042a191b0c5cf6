"""Operations: degraded answers when the feature service is down or slow, deadlines, load
shedding, Prometheus metrics, request ids across both services, masked user ids in logs."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feature_service.loader import load_artifact
from feature_service.server import create_feature_server
from feature_service.service import FeatureServiceCore
from feature_service.servicer import SERVICE_NAME as FEATURES
from feature_service.servicer import FeatureServicer
from feature_service.stores import open_store
from inference_server.server import FEATURES_HEALTH_NAME, start_inference_service
from inference_server.servicer import fetch_timeout
from recsys import logs
from recsys.artifact import read_manifest
from recsys.grpc_server import ServiceBinding, create_server, set_serving
from recsys.v1 import features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class SlowFeatures(FeatureServicer):
    """The real feature servicer, whose user lookups take `delay_s` seconds."""

    delay_s = 0.0

    def GetUserFeatures(self, request, context):
        time.sleep(self.delay_s)
        return super().GetUserFeatures(request, context)


@pytest.fixture
def slow_features(trained_artifact):
    store = open_store("memory://")
    load_artifact(store, trained_artifact)
    core = FeatureServiceCore(store, read_manifest(trained_artifact).schema.contract())
    servicer = SlowFeatures(core)
    server, port, health = create_server(
        [ServiceBinding(servicer, features_pb2_grpc.add_FeatureServiceServicer_to_server, FEATURES)], host="127.0.0.1"
    )
    set_serving(health, [FEATURES], serving=True)
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)
    core.close()


@pytest.fixture
def up(trained_artifact):
    """A feature server and an inference server over it (metrics on, access logs on)."""
    fserver, fport, _, fcore = create_feature_server(
        trained_artifact, "memory://", host="127.0.0.1", metrics_port=0, metrics_host="127.0.0.1", access_log=True
    )
    service = start_inference_service(
        trained_artifact,
        f"127.0.0.1:{fport}",
        host="127.0.0.1",
        max_k=50,
        health_interval_s=0.05,
        metrics_port=0,
        metrics_host="127.0.0.1",
        access_log=True,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
    yield {
        "service": service,
        "fserver": fserver,
        "fcore": fcore,
        "channel": channel,
        "infer": inference_pb2_grpc.InferenceServiceStub(channel),
        "health": health_pb2_grpc.HealthStub(channel),
    }
    channel.close()
    service.stop()
    fserver.stop(None)
    fcore.close()


def health(stub, name: str) -> int:
    return stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def test_fetch_timeout_leaves_the_model_its_share():
    assert fetch_timeout(None, None, 1.0) == 1.0  # no deadline anywhere: the client's own timeout
    assert fetch_timeout(1e9, None, 0.7) == 0.7  # "no deadline" as gRPC reports it
    assert fetch_timeout(0.3, 1.0, 1.0) == pytest.approx(0.225)  # the caller's deadline is sooner
    assert fetch_timeout(5.0, 0.5, 1.0) == pytest.approx(0.375)  # the server's own timeout is sooner
    assert fetch_timeout(10.0, None, 1.0) == 1.0  # a long budget: the feature timeout caps the fetch
    assert fetch_timeout(4.0, None, 9.0) == pytest.approx(3.75)  # the model keeps at most 0.25 s
    assert fetch_timeout(0.01, None, 1.0) == pytest.approx(0.0075)  # a quarter of a tiny budget
    assert fetch_timeout(-1.0, None, 1.0) == 0.001  # already late: fail the fetch fast, degrade


def test_feature_service_down_answers_degraded_from_request_history(up):
    infer = up["infer"]
    user = features_pb2.GetUserFeaturesRequest(user_ids=["u000"], max_history=1000)
    history = list(up["service"].manager.features.stub.GetUserFeatures(user, timeout=5).users[0].history)
    full = infer.Recommend(inference_pb2.RecommendRequest(user_id="u000", k=5, exclude_seen=True), timeout=5)
    assert not full.degraded and full.source == inference_pb2.SOURCE_MODEL

    up["fserver"].stop(None).wait()
    wait_for(lambda: health(up["health"], FEATURES_HEALTH_NAME) == NOT_SERVING)
    assert health(up["health"], "") == SERVING  # it still answers: degraded, not down

    own = infer.Recommend(
        inference_pb2.RecommendRequest(user_id="u000", k=5, exclude_seen=True, history=history), timeout=5
    )
    assert own.degraded and own.source == inference_pb2.SOURCE_REQUEST_HISTORY
    assert [i.item_id for i in own.items] == [i.item_id for i in full.items]  # same history, same answer
    assert own.model_version == full.model_version

    bare = infer.Recommend(inference_pb2.RecommendRequest(user_id="u000", k=5), timeout=5)
    assert bare.degraded and bare.source == inference_pb2.SOURCE_POPULARITY and len(bare.items) == 5
    score = infer.Score(inference_pb2.ScoreRequest(user_id="u000", item_ids=["m01", "m02"]), timeout=5)
    assert score.degraded and score.source == inference_pb2.SOURCE_POPULARITY and len(score.scores) == 2

    with pytest.raises(grpc.RpcError) as info:
        infer.Recommend(inference_pb2.RecommendRequest(user_id="u000", k=5, history=["m01"] * 1001), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    text = scrape(up["service"].metrics_port)
    assert 'recsys_degraded_responses_total{rpc="Recommend",source="request_history"} 1.0' in text
    assert 'recsys_degraded_responses_total{rpc="Recommend",source="fallback"} 1.0' in text
    assert "recsys_feature_service_up 0.0" in text


def test_slow_feature_service_answers_within_the_deadline(trained_artifact, slow_features):
    servicer, target = slow_features
    service = start_inference_service(
        trained_artifact, target, host="127.0.0.1", request_timeout_s=2.0, feature_timeout_s=30.0
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            assert not stub.Recommend(inference_pb2.RecommendRequest(user_id="u000", k=5), timeout=5).degraded
            servicer.delay_s = 5.0
            # The caller's deadline (1.2 s) bounds the fetch, then the server's own timeout (2 s) does:
            # degraded answers, not DEADLINE_EXCEEDED and not the 5 s the feature service takes.
            for deadline in (1.2, None):
                start = time.monotonic()
                reply = stub.Recommend(
                    inference_pb2.RecommendRequest(user_id="u000", k=5, history=["m01", "m02"]), timeout=deadline
                )
                assert time.monotonic() - start < 4.5
                assert reply.degraded and reply.source == inference_pb2.SOURCE_REQUEST_HISTORY
    finally:
        servicer.delay_s = 0.0
        service.stop()


def test_load_is_shed_with_resource_exhausted(trained_artifact, slow_features):
    servicer, target = slow_features
    servicer.delay_s = 0.5
    service = start_inference_service(
        trained_artifact, target, host="127.0.0.1", max_workers=2, max_concurrent_rpcs=2, request_timeout_s=2.0
    )
    codes: list[grpc.StatusCode] = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)

            def call() -> None:
                try:
                    stub.Recommend(inference_pb2.RecommendRequest(user_id="u000", k=5), timeout=5)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())

            calls = [threading.Thread(target=call) for _ in range(8)]
            for c in calls:
                c.start()
            for c in calls:
                c.join()
    finally:
        servicer.delay_s = 0.0
        service.stop()
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes


def test_request_id_crosses_both_services_and_metrics_count_calls(up, caplog):
    caplog.set_level(logging.INFO, logger="recsys.access")
    reply, call = up["infer"].Recommend.with_call(
        inference_pb2.RecommendRequest(user_id="u001", k=3), timeout=5, metadata=(("x-request-id", "req-42"),)
    )
    assert ("x-request-id", "req-42") in call.initial_metadata()
    lines = {(r.getMessage().split()[0], getattr(r, "request_id", "")) for r in caplog.records}
    assert ("/recsys.v1.InferenceService/Recommend", "req-42") in lines
    assert ("/recsys.v1.FeatureService/GetUserFeatures", "req-42") in lines

    _, call = up["infer"].Recommend.with_call(inference_pb2.RecommendRequest(user_id="u001", k=3), timeout=5)
    generated = dict(call.initial_metadata())["x-request-id"]
    assert len(generated) == 32 and generated != "req-42"

    with pytest.raises(grpc.RpcError):
        up["infer"].Recommend(inference_pb2.RecommendRequest(user_id="", k=3), timeout=5)
    text = scrape(up["service"].metrics_port)
    call = 'grpc_method="Recommend",grpc_service="recsys.v1.InferenceService",grpc_type="unary"'
    assert f'grpc_server_handled_total{{grpc_code="OK",{call}}} 2.0' in text
    assert f'grpc_server_handled_total{{grpc_code="INVALID_ARGUMENT",{call}}} 1.0' in text
    assert f"grpc_server_handling_seconds_count{{{call}}} 3.0" in text
    version = up["service"].manager.current.label
    assert f'recsys_model_info{{model_version="{version}",version="0"}} 1.0' in text
    assert 'recsys_feature_fetch_seconds_count{code="OK",method="GetUserFeatures"} 2.0' in text
    assert "recsys_feature_service_up 1.0" in text
    ftext = scrape(up["fcore"].metrics_port)
    fcall = 'grpc_method="GetUserFeatures",grpc_service="recsys.v1.FeatureService",grpc_type="unary"'
    assert f'grpc_server_handled_total{{grpc_code="OK",{fcall}}} 2.0' in ftext


def test_logs_mask_user_ids_unless_asked_and_write_json():
    masked = logs.user_ref("u000")
    assert masked.startswith("user:") and "u000" not in masked and masked == logs.user_ref("u000")
    assert masked != logs.user_ref("u001")
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure(json_lines=True, stream=stream)
        token = logs.REQUEST_ID.set("rid-1")
        logging.getLogger("recsys.test").info("hello %s", logs.user_ref("u000"), extra={"k": 3})
        logs.REQUEST_ID.reset(token)
        entry = json.loads(stream.getvalue().splitlines()[-1])
        assert entry["message"] == f"hello {masked}" and entry["request_id"] == "rid-1" and entry["k"] == 3
        assert entry["level"] == "INFO" and entry["logger"] == "recsys.test"
        logs.configure(log_user_ids=True, stream=stream)
        assert logs.user_ref("u000") == "u000"
    finally:
        logs.configure(log_user_ids=False, stream=stream)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
