"""Both services on real servers against idle streams, and the `recsys` command in front of a
broken artifact: one line, a non-zero exit, no traceback."""

from __future__ import annotations

import json
import shutil
import time

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feature_service.server import create_feature_server
from inference_server.feature_inputs import FeatureInputs
from inference_server.server import create_inference_server
from recsys.artifact import MANIFEST, MODEL, Manifest, ModelInput, file_sha256
from recsys.cli import main
from recsys.schema import FeatureKind, FeatureSchema, FeatureSpec
from recsys.v1 import features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc
from tests.recsys.test_hardening import idle_streams

WORKERS = 8  # both servers' default


@pytest.fixture
def loopback_services(trained_artifact):
    # loopback: reflection is on, so both kinds of stream reach the servers
    fserver, fport, _, fcore = create_feature_server(trained_artifact, "memory://", host="127.0.0.1")
    iserver, iport, _, recommender = create_inference_server(trained_artifact, f"127.0.0.1:{fport}", host="127.0.0.1")
    yield f"127.0.0.1:{fport}", f"127.0.0.1:{iport}"
    iserver.stop(None)
    fserver.stop(None)
    recommender.features.close()
    fcore.close()


def test_idle_reflection_and_watch_streams_do_not_stop_either_server(loopback_services):
    ftarget, itarget = loopback_services
    with idle_streams(ftarget, WORKERS) as fstreams, idle_streams(itarget, WORKERS) as istreams:
        for outcomes in (fstreams, istreams):
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in outcomes
            assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        with grpc.insecure_channel(ftarget) as fchannel, grpc.insecure_channel(itarget) as ichannel:
            start = time.monotonic()
            schema = features_pb2_grpc.FeatureServiceStub(fchannel).GetSchema(
                features_pb2.GetSchemaRequest(), timeout=2
            )
            reply = inference_pb2_grpc.InferenceServiceStub(ichannel).Recommend(
                inference_pb2.RecommendRequest(user_id="u000", k=5), timeout=2
            )
            for channel in (fchannel, ichannel):
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert time.monotonic() - start < 2.0
        assert schema.schema_hash and len(reply.items) == 5


# -- a broken artifact on the command line -----------------------------------------------------


@pytest.fixture
def artifact(trained_artifact, tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(trained_artifact, copy)
    return copy


def rewrite_manifest(artifact, change) -> None:
    manifest = json.loads((artifact / MANIFEST).read_text())
    change(manifest)
    (artifact / MANIFEST).write_text(json.dumps(manifest))


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    return result.output


def test_serving_an_onnx_file_that_does_not_parse_is_one_line(artifact):
    (artifact / MODEL).write_bytes(b"\x08\x07garbage that matches its checksum")
    rewrite_manifest(artifact, lambda m: m["files"].update({MODEL: file_sha256(artifact / MODEL)}))
    result = CliRunner().invoke(
        main, ["serve", "inference", "--artifact", str(artifact), "--features", "127.0.0.1:1", "--port", "0"]
    )
    assert "model.onnx is not a valid ONNX model: " in one_line_error(result)


def test_publishing_or_serving_a_manifest_that_leaves_out_the_model_is_one_line(artifact, tmp_path):
    rewrite_manifest(artifact, lambda m: m["files"].pop(MODEL))
    published = CliRunner().invoke(main, ["publish", "--artifact", str(artifact), "--repo", str(tmp_path / "repo")])
    assert "model.onnx is not listed in its manifest" in one_line_error(published)
    served = CliRunner().invoke(
        main, ["serve", "inference", "--artifact", str(artifact), "--features", "127.0.0.1:1", "--port", "0"]
    )
    assert "model.onnx is not listed in its manifest" in one_line_error(served)


# -- huge numbers in served features ---------------------------------------------------------------


def test_huge_feature_values_give_finite_float32_inputs():
    schema = FeatureSchema(
        user_features=(FeatureSpec("age", FeatureKind.NUMERIC, mean=30.0, std=10.0),),
        item_features=(FeatureSpec("price", FeatureKind.NUMERIC, mean=5.0, std=2.0),),
    )
    manifest = Manifest(
        model_kind="test",
        task="rank",
        model_version="t",
        inputs=(
            ModelInput("user_num", "user.num", "float32", ("batch", "n")),
            ModelInput("item_num", "item.num", "float32", ("batch", "n")),
        ),
        output="score",
        num_items=3,
        schema=schema,
        item_index_sha256="",
        training={
            "inputs": {
                "user_num": ["age"],
                "item_num": ["price"],
                "item_multi_len": 1,
                "history_len": 0,
            }
        },
    )
    inputs = FeatureInputs(manifest, ("a", "b", "c"))
    rows = {"a": {"price": 1e308}, "b": {"price": 7.0}, "c": {"price": -3.4e38}}
    assert inputs.load_items(lambda ids: [(i, rows[i]) for i in ids]) == 3
    feeds = inputs.feeds({"age": 1e30}, np.zeros(0, dtype=np.int64), np.array([2, 3, 4], dtype=np.int64))
    for value in feeds.values():
        assert value.dtype == np.float32 and np.isfinite(value).all()
    assert feeds["item_num"][:, 0].tolist() == [0.0, 1.0, 0.0]  # 1e308 and -3.4e38: missing
    assert feeds["user_num"].ravel().tolist() == [0.0] * len(feeds["user_num"].ravel())
    assert inputs.out_of_range == {"item.price": 2, "user.age": 1}
