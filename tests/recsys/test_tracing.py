"""One Recommend traced across client -> inference server -> feature service: one trace id,
the feature fetch and the model run as children of the inference server's span."""

from __future__ import annotations

import grpc
import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.instrumentation.grpc")

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

from feature_service.server import create_feature_server  # noqa: E402
from inference_server.server import start_inference_service  # noqa: E402
from recsys.tracing import setup_tracing, span, teardown_tracing  # noqa: E402
from recsys.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402


def test_setup_is_a_no_op_unless_the_environment_asks(monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert setup_tracing("recsys-test") is False
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert setup_tracing("recsys-test") is False
    with span("model.run") as nothing:
        assert nothing is None


def test_one_recommend_is_one_trace_over_both_hops(trained_artifact):
    exporter = InMemorySpanExporter()
    assert setup_tracing("recsys-test", exporter=exporter)
    try:
        fserver, fport, _, fcore = create_feature_server(trained_artifact, "memory://", host="127.0.0.1")
        service = start_inference_service(trained_artifact, f"127.0.0.1:{fport}", host="127.0.0.1")
        try:
            exporter.clear()  # start-up calls (the contract check) are traces of their own
            with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                reply = inference_pb2_grpc.InferenceServiceStub(channel).Recommend(
                    inference_pb2.RecommendRequest(user_id="u001", k=3), timeout=5
                )
            assert len(reply.items) == 3 and not reply.degraded
        finally:
            service.stop()
            fserver.stop(None)
            fcore.close()
    finally:
        teardown_tracing()

    spans = exporter.get_finished_spans()
    by = {(s.name, s.kind): s for s in spans}
    client = by[("/recsys.v1.InferenceService/Recommend", SpanKind.CLIENT)]
    recommend = by[("/recsys.v1.InferenceService/Recommend", SpanKind.SERVER)]
    fetch = by[("/recsys.v1.FeatureService/GetUserFeatures", SpanKind.CLIENT)]
    served = by[("/recsys.v1.FeatureService/GetUserFeatures", SpanKind.SERVER)]
    run = by[("model.run", SpanKind.INTERNAL)]
    assert {s.context.trace_id for s in spans} == {client.context.trace_id}
    assert recommend.parent.span_id == client.context.span_id
    assert fetch.parent.span_id == recommend.context.span_id
    assert served.parent.span_id == fetch.context.span_id
    assert run.parent.span_id == recommend.context.span_id
    assert not any("Health" in s.name for s in spans)
