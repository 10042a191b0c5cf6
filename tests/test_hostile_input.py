"""Hostile input: random and malformed requests against both real servers (in-process, port 0).

Property: no request, however odd (empty, huge, unicode and control-character ids, huge or
negative numbers, NaN/inf feature values, duplicate or too many ids, bytes that are not a valid
protobuf message), gets INTERNAL or UNKNOWN, and the servers keep serving afterwards. Each test
runs `RECSYS_FUZZ_EXAMPLES` generated requests (50 here; `make fuzz` runs 2,000).
"""

from __future__ import annotations

import math
import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_service.server import create_feature_server
from inference_server.server import create_inference_server
from recsys.feature_values import from_proto_map
from recsys.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    features_pb2,
    features_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    types_pb2,
)

EXAMPLES = int(os.environ.get("RECSYS_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# RESOURCE_EXHAUSTED too: no request here nears the 16 MiB limit, but gRPC answers it when a
# status message is over its 16 KiB metadata limit (an error quoting a huge value), hiding the error.
SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED}
# Examples holding the 100,000-character id make hypothesis warn that their repr is large.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# --- strategies ------------------------------------------------------------------------------

KNOWN_USERS = ["u000", "u001", "u042"]
KNOWN_ITEMS = ["m00", "m01", "m39"]
ids = st.one_of(
    st.sampled_from(["", " ", "\x00", "u000\x00", "\u202e", "😀" * 64, "e\u0301", "x" * 257, "x" * 100_000]),
    st.sampled_from(KNOWN_USERS + KNOWN_ITEMS),
    st.text(max_size=20),  # any unicode (no lone surrogates: protobuf strings are UTF-8)
    st.text(alphabet=st.characters(max_codepoint=31), max_size=8),  # control characters
    st.text(min_size=250, max_size=262),  # around the 256-character limit
)
short_ids = st.one_of(st.sampled_from(["", "\x00", "x" * 257] + KNOWN_USERS + KNOWN_ITEMS), st.text(max_size=8))
# Few ids, duplicates, or exactly at and over the per-request maximum (1,000).
id_lists = st.one_of(
    st.lists(ids, max_size=6),
    st.builds(lambda i, n: [i] * n, short_ids, st.sampled_from([2, 999, 1000, 1001, 5000])),
)
int32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, -1, 1000, 1001, 2**31 - 1]))
int64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 1, 2**53, 2**53 + 1, 2**63 - 1]))
numbers = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324]))
feature_values = st.one_of(
    st.builds(lambda v: types_pb2.FeatureValue(number=v), numbers),
    st.builds(lambda v: types_pb2.FeatureValue(category=v), ids),
    st.builds(lambda v: types_pb2.FeatureValue(text=v), ids),
    st.builds(lambda v: types_pb2.FeatureValue(categories=types_pb2.StringList(values=v)), st.lists(ids, max_size=5)),
    st.just(types_pb2.FeatureValue()),  # no value set
)
feature_names = st.one_of(st.sampled_from(["age", "gender", "title", "genres"]), st.text(max_size=10))
feature_rows = st.lists(
    st.builds(
        lambda i, f: features_pb2.FeatureRow(id=i, features=f),
        ids,
        st.dictionaries(feature_names, feature_values, max_size=4),
    ),
    max_size=4,
)
interactions = st.lists(
    st.builds(types_pb2.Interaction, user_id=ids, item_id=ids, timestamp=int64, event_id=ids), max_size=5
)
# Bytes that are not a valid request: random, truncated, invalid UTF-8 in a string field,
# a field of the wrong wire type, a length running past the end.
garbage = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\x0a\x02\xff\xfe", b"\x0a\x05ab", b"\x0a\xff\xff\xff\xff\x0f", b"\x0d\x00", b"\xff" * 8]),
)

# --- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def features(request, trained_artifact, tmp_path_factory):
    """A feature server over the trained artifact, with the in-memory and the SQLite store."""
    url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path_factory.mktemp('fuzz')}/features.sqlite"
    server, port, _, core = create_feature_server(trained_artifact, url)
    channel = grpc.insecure_channel(f"localhost:{port}")
    yield {"target": f"localhost:{port}", "channel": channel, "stub": features_pb2_grpc.FeatureServiceStub(channel)}
    channel.close()
    server.stop(None)
    core.close()


@pytest.fixture(scope="module")
def inference(trained_artifact):
    fserver, fport, _, fcore = create_feature_server(trained_artifact, "memory://")
    server, port, _, recommender = create_inference_server(trained_artifact, f"localhost:{fport}", max_k=50)
    channel = grpc.insecure_channel(f"localhost:{port}")
    fchannel = grpc.insecure_channel(f"localhost:{fport}")
    yield {
        "channel": channel,
        "stub": inference_pb2_grpc.InferenceServiceStub(channel),
        "features": features_pb2_grpc.FeatureServiceStub(fchannel),
    }
    channel.close()
    fchannel.close()
    server.stop(None)
    fserver.stop(None)
    recommender.features.close()
    fcore.close()


def survives(call):
    """Runs one call; returns the response or the error code, failing on INTERNAL/UNKNOWN."""
    try:
        return call()
    except grpc.RpcError as exc:
        assert exc.code() not in SERVER_ERRORS, f"{exc.code().name}: {exc.details()[:2000]}"
        return exc.code()


def still_serving(channel, call):
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    call()  # a plain valid request still answers


# --- feature service -------------------------------------------------------------------------


@FUZZ
@given(user_ids=id_lists, max_history=int32, item_ids=id_lists, forget=ids)
def test_feature_reads_and_forget_survive_anything(features, user_ids, max_history, item_ids, forget):
    stub = features["stub"]
    reply = survives(
        lambda: stub.GetUserFeatures(
            features_pb2.GetUserFeaturesRequest(user_ids=user_ids, max_history=max_history), timeout=10
        )
    )
    if not isinstance(reply, grpc.StatusCode):
        assert [u.user_id for u in reply.users] == user_ids  # one answer per id, in request order
    reply = survives(lambda: stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=item_ids), timeout=10))
    if not isinstance(reply, grpc.StatusCode):
        assert [i.item_id for i in reply.items] == item_ids
    survives(lambda: stub.ForgetUser(features_pb2.ForgetUserRequest(user_id=forget), timeout=10))


@FUZZ
@given(events=interactions)
def test_record_interactions_survives_anything(features, events):
    stub = features["stub"]
    reply = survives(
        lambda: stub.RecordInteractions(features_pb2.RecordInteractionsRequest(interactions=events), timeout=10)
    )
    if not isinstance(reply, grpc.StatusCode):
        assert reply.recorded + reply.duplicates == len(events)


@FUZZ
@given(rows=feature_rows, items=st.booleans())
def test_feature_updates_survive_anything_and_read_back(features, rows, items):
    stub = features["stub"]
    if items:
        reply = survives(lambda: stub.UpdateItemFeatures(features_pb2.UpdateItemFeaturesRequest(rows=rows), timeout=10))
    else:
        reply = survives(lambda: stub.UpdateUserFeatures(features_pb2.UpdateUserFeaturesRequest(rows=rows), timeout=10))
    if isinstance(reply, grpc.StatusCode):
        assert reply == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED from an oversized message
        return
    # Accepted: every value was valid (finite numbers among them), and reads give it back.
    last = {r.id: r for r in rows}  # a later row of the same id replaces an earlier one
    ids = list(last)
    if items:
        got = stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=ids), timeout=10).items
    else:
        got = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=ids), timeout=10).users
    for answer in got:
        sent = {
            k: v
            for k, v in from_proto_map(last[answer.user_id if not items else answer.item_id].features).items()
            if v is not None
        }
        assert answer.found and from_proto_map(answer.features) == sent


@FUZZ
@given(
    method=st.sampled_from(
        [
            "GetUserFeatures",
            "GetItemFeatures",
            "RecordInteractions",
            "UpdateUserFeatures",
            "UpdateItemFeatures",
            "ForgetUser",
            "GetSchema",
        ]
    ),
    data=garbage,
)
def test_feature_service_refuses_malformed_bytes(features, method, data):
    call = features["channel"].unary_unary(f"/recsys.v1.FeatureService/{method}")
    survives(lambda: call(data, timeout=10))


def test_huge_values_are_refused_with_a_short_message(features):
    huge = "x" * 100_000
    for value in (
        types_pb2.FeatureValue(number=math.nan),
        types_pb2.FeatureValue(category=huge),
        types_pb2.FeatureValue(categories=types_pb2.StringList(values=["Drama"] * 1001)),
    ):
        for field in ("gender", "age", "genres"):
            row = features_pb2.FeatureRow(id="u000", features={field: value})
            with pytest.raises(grpc.RpcError) as info:
                features["stub"].UpdateUserFeatures(features_pb2.UpdateUserFeaturesRequest(rows=[row]), timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(info.value.details()) < 1100


def test_feature_service_still_serves_after_the_fuzzing(features):
    stub = features["stub"]
    for raw in (b"\x0a\x02\xff\xfe", b"\x0a\xff\xff\xff\xff\x0f"):  # invalid UTF-8; length past the end
        error = survives(
            lambda raw=raw: features["channel"].unary_unary("/recsys.v1.FeatureService/ForgetUser")(raw, timeout=5)
        )
        assert error == grpc.StatusCode.INVALID_ARGUMENT
    still_serving(features["channel"], lambda: stub.GetSchema(features_pb2.GetSchemaRequest(), timeout=5))


# --- inference server ------------------------------------------------------------------------


@FUZZ
@given(user_id=ids, k=int32, exclude_seen=st.booleans(), events=interactions, history=id_lists)
def test_recommend_survives_anything(inference, user_id, k, exclude_seen, events, history):
    # Give some odd users odd histories (unknown items, odd ids) before asking for them.
    survives(
        lambda: inference["features"].RecordInteractions(
            features_pb2.RecordInteractionsRequest(
                interactions=[
                    types_pb2.Interaction(
                        user_id=user_id, item_id=e.item_id, timestamp=e.timestamp, event_id=e.event_id
                    )
                    for e in events
                ]
            ),
            timeout=10,
        )
    )
    reply = survives(
        lambda: inference["stub"].Recommend(
            inference_pb2.RecommendRequest(user_id=user_id, k=k, exclude_seen=exclude_seen, history=history), timeout=10
        )
    )
    if not isinstance(reply, grpc.StatusCode):
        assert 1 <= k <= 50 and len(reply.items) <= k
        assert all(math.isfinite(i.score) for i in reply.items)


@FUZZ
@given(
    user_id=ids,
    item_ids=st.one_of(
        id_lists,
        st.lists(st.sampled_from(KNOWN_ITEMS), max_size=20),
        st.builds(lambda n: ["m01"] * n, st.sampled_from([10_000, 10_001])),
    ),
)
def test_score_survives_anything(inference, user_id, item_ids):
    reply = survives(
        lambda: inference["stub"].Score(inference_pb2.ScoreRequest(user_id=user_id, item_ids=item_ids), timeout=10)
    )
    if not isinstance(reply, grpc.StatusCode):
        assert len(reply.scores) == len(item_ids)


@FUZZ
@given(method=st.sampled_from(["Recommend", "Score"]), data=garbage)
def test_inference_server_refuses_malformed_bytes(inference, method, data):
    call = inference["channel"].unary_unary(f"/recsys.v1.InferenceService/{method}")
    survives(lambda: call(data, timeout=10))


@pytest.fixture(scope="module")
def admin(trained_artifact, tmp_path_factory):
    """An inference server over a model repository with two versions (no watcher)."""
    from inference_server.repository import ModelRepository
    from inference_server.server import start_inference_service

    repo = ModelRepository(tmp_path_factory.mktemp("fuzz-repo"))
    repo.publish(trained_artifact, "m")
    repo.publish(trained_artifact, "m")
    fserver, fport, _, fcore = create_feature_server(trained_artifact, "memory://")
    service = start_inference_service(None, f"localhost:{fport}", repo=repo.root, model="m", watch_interval_s=0)
    channel = grpc.insecure_channel(f"localhost:{service.port}")
    yield {"channel": channel, "stub": admin_pb2_grpc.AdminServiceStub(channel)}
    channel.close()
    service.stop()
    fserver.stop(None)
    fcore.close()


@FUZZ
@given(
    method=st.sampled_from(["GetModelStatus", "LoadModelVersion", "RollbackModel"]),
    version=st.one_of(int64, st.sampled_from([0, 1, 2, 3])),
    data=st.one_of(st.none(), garbage),
)
def test_admin_service_survives_anything(admin, method, version, data):
    if data is not None:
        call = admin["channel"].unary_unary(f"/recsys.v1.AdminService/{method}")
        survives(lambda: call(data, timeout=30))
        return
    stub = admin["stub"]
    if method == "GetModelStatus":
        reply = survives(lambda: stub.GetModelStatus(admin_pb2.GetModelStatusRequest(), timeout=30))
    elif method == "LoadModelVersion":
        reply = survives(lambda: stub.LoadModelVersion(admin_pb2.LoadModelVersionRequest(version=version), timeout=30))
    else:
        reply = survives(lambda: stub.RollbackModel(admin_pb2.RollbackModelRequest(version=version), timeout=30))
    if not isinstance(reply, grpc.StatusCode):
        assert reply.serving_version in (1, 2)


def test_unknown_huge_item_ids_are_named_briefly(inference):
    with pytest.raises(grpc.RpcError) as info:
        inference["stub"].Score(inference_pb2.ScoreRequest(user_id="u000", item_ids=["y" * 100_000] * 20), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "item_ids holds an id longer than 256 characters"


def test_inference_server_still_serves_after_the_fuzzing(inference):
    stub = inference["stub"]
    raw = b"\x0a\x02\xff\xfe"  # user_id that is not UTF-8
    error = survives(lambda: inference["channel"].unary_unary("/recsys.v1.InferenceService/Recommend")(raw, timeout=5))
    assert error == grpc.StatusCode.INVALID_ARGUMENT
    still_serving(
        inference["channel"],
        lambda: stub.Recommend(inference_pb2.RecommendRequest(user_id="u000", k=5, exclude_seen=True), timeout=5),
    )
