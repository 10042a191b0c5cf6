"""An inference server reading the feature store in its own process (`--feature-store`): the same
answers as over the feature service, writes through the feature service seen at once, the same
degradation when the store cannot answer, clear refusals."""

from __future__ import annotations

import grpc
import pytest
from click.testing import CliRunner

from feature_service.server import create_feature_server
from feature_service.stores import open_store
from inference_server.feature_client import SchemaMismatch
from inference_server.local_features import LocalFeatures
from inference_server.server import create_inference_server
from recsys.artifact import read_manifest
from recsys.cli import main as cli
from recsys.cli.serve import open_feature_core
from recsys.errors import FailedPrecondition, Unavailable
from recsys.feature_values import as_served, from_proto_map, to_proto_map
from recsys.schema import FeatureContract, FeatureKind
from recsys.v1 import features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc, types_pb2

USERS = [f"u{i:03d}" for i in range(6)]


@pytest.fixture
def both(trained_artifact, tmp_path):
    """A feature service on a SQLite store, an inference server asking it over gRPC, and one
    reading the same store in process."""
    url = f"sqlite:///{tmp_path / 'features.db'}"
    fserver, fport, _, fcore = create_feature_server(trained_artifact, url)
    remote_server, remote_port, _, remote = create_inference_server(trained_artifact, f"localhost:{fport}")
    local_server, local_port, _, local = create_inference_server(
        trained_artifact, "unused:1", feature_store=url, open_feature_store=open_feature_core
    )
    channels = [grpc.insecure_channel(f"localhost:{p}") for p in (fport, remote_port, local_port)]
    yield {
        "features": features_pb2_grpc.FeatureServiceStub(channels[0]),
        "remote": inference_pb2_grpc.InferenceServiceStub(channels[1]),
        "local": inference_pb2_grpc.InferenceServiceStub(channels[2]),
        "local_recommender": local,
    }
    for channel in channels:
        channel.close()
    for server in (local_server, remote_server, fserver):
        server.stop(None)
    local.features.close()
    remote.features.close()
    fcore.close()


def recommend(stub, user, k=10):
    return stub.Recommend(inference_pb2.RecommendRequest(user_id=user, k=k, exclude_seen=True), timeout=5)


def test_same_answers_as_over_the_feature_service(both):
    for user in [*USERS, "nobody"]:
        remote, local = recommend(both["remote"], user), recommend(both["local"], user)
        assert [i.item_id for i in local.items] == [i.item_id for i in remote.items]
        assert [i.score for i in local.items] == pytest.approx([i.score for i in remote.items], abs=1e-6)
        assert local.source == remote.source and local.degraded == remote.degraded is False
    ids = [i.item_id for i in recommend(both["remote"], "u001", k=3).items]
    request = inference_pb2.ScoreRequest(user_id="u001", item_ids=ids)
    local, remote = both["local"].Score(request, timeout=5), both["remote"].Score(request, timeout=5)
    assert local.source == inference_pb2.SOURCE_MODEL
    assert list(local.scores) == pytest.approx(list(remote.scores), abs=1e-6)


def test_events_recorded_through_the_feature_service_are_read_at_once(both):
    top = recommend(both["local"], "u002").items[0].item_id
    both["features"].RecordInteractions(
        features_pb2.RecordInteractionsRequest(
            interactions=[types_pb2.Interaction(user_id="u002", item_id=top, timestamp=2_000_000_000)]
        ),
        timeout=5,
    )
    after = [i.item_id for i in recommend(both["local"], "u002").items]
    assert top not in after  # now seen, so excluded
    assert after == [i.item_id for i in recommend(both["remote"], "u002").items]


def test_a_forgotten_user_is_forgotten_here_too(both):
    assert recommend(both["local"], "u003").source == inference_pb2.SOURCE_MODEL
    both["features"].ForgetUser(features_pb2.ForgetUserRequest(user_id="u003"), timeout=5)
    assert recommend(both["local"], "u003").source == inference_pb2.SOURCE_POPULARITY


class _Down:
    """A core whose store no longer answers."""

    def __init__(self, core):
        self.core = core

    def __getattr__(self, name):
        return getattr(self.core, name)

    def get_user_features(self, user_ids, max_history=0):
        raise Unavailable("feature store unavailable: connection refused")


def test_a_store_that_cannot_answer_degrades_like_a_feature_service_that_is_down(both):
    features = both["local_recommender"].features
    features.core = _Down(features.core)
    reply = recommend(both["local"], "u001")
    assert reply.degraded and reply.source == inference_pb2.SOURCE_POPULARITY and len(reply.items) == 10


def test_a_store_without_what_the_model_reads_is_a_schema_mismatch(trained_artifact, tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    _, _, _, fcore = create_feature_server(trained_artifact, url)
    fcore.close()
    local = LocalFeatures(open_feature_core(url), url)
    try:
        needs = FeatureContract(user={"no_such_feature": FeatureKind.NUMERIC}, item={})
        with pytest.raises(SchemaMismatch, match="no_such_feature"):
            local.check_compatible(needs)
    finally:
        local.close()


def test_a_store_loaded_after_the_server_started_is_picked_up(trained_artifact, tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'features.db'}"
    open_store(url).close()  # the feature service created the file and has not loaded it yet
    local = LocalFeatures(open_feature_core(url), url)
    try:
        assert "holds no artifact yet" in caplog.text
        assert not local.get_user("u001", 10).found
        _, _, _, fcore = create_feature_server(trained_artifact, url)  # loads the artifact
        fcore.close()
        needs = read_manifest(trained_artifact).needs
        local.check_compatible(needs)  # the health round reads the contract again
        assert local.contract() == fcore.contract
        assert local.get_user("u001", 10).found
    finally:
        local.close()


def test_a_missing_store_is_refused_with_what_to_do(tmp_path):
    missing = tmp_path / "typo.db"
    with pytest.raises(FailedPrecondition, match="no feature store at"):
        open_feature_core(f"sqlite:///{missing}")
    assert not missing.exists()  # a reader creates no store


def test_the_store_url_is_named_without_its_password():
    class Core:
        contract_hash, max_batch = "", 1000

    local = LocalFeatures(Core(), "redis://:s3cret@cache:6379/0")  # type: ignore[arg-type]
    assert local.target == "redis://cache:6379/0" and "s3cret" not in local.name


def test_values_as_the_wire_format_gives_them():
    row = {"age": 31, "score": 0.5, "city": "Oslo", "tags": ["a", 7], "gone": None}
    kinds = {"age": FeatureKind.NUMERIC, "city": FeatureKind.CATEGORICAL}
    assert as_served(row) == from_proto_map(to_proto_map(row, kinds))


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "--features HOST:PORT"),
        (["--features", "localhost:1", "--feature-store", "sqlite:///x.db"], "--features HOST:PORT"),
        (["--feature-store", "memory://"], "memory://"),
        (["--feature-store", "sqlite:///x.db", "--features-token-file", __file__], "are for --features"),
    ],
)
def test_cli_needs_exactly_one_feature_source(trained_artifact, flags, message):
    result = CliRunner().invoke(cli, ["serve", "inference", "--artifact", str(trained_artifact), *flags])
    assert result.exit_code == 2 and message in result.output


def test_answers_in_full_while_the_feature_service_is_down(trained_artifact, tmp_path):
    url = f"sqlite:///{tmp_path / 'features.db'}"
    fserver, _, _, fcore = create_feature_server(trained_artifact, url)
    fserver.stop(None)
    fcore.close()  # the feature service is gone; its store file stays
    server, port, _, local = create_inference_server(
        trained_artifact, "unused:1", feature_store=url, open_feature_store=open_feature_core
    )
    try:
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            reply = recommend(inference_pb2_grpc.InferenceServiceStub(channel), "u001")
        assert reply.source == inference_pb2.SOURCE_MODEL and not reply.degraded
    finally:
        server.stop(None)
        local.features.close()
