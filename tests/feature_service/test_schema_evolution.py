"""The store's raw feature contract as models come and go: features are added freely, never change
kind, and are removed only when no registered model reads them; loads never undo newer writes
and never mix two datasets; the running service picks up what a load added."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import grpc
import pytest

from feature_service.loader import load_artifact, registered_models, release_model, remove_feature, stored_contract
from feature_service.server import create_feature_server
from feature_service.stores.memory import MemoryStore
from feature_service.stores.sqlite import SqliteStore
from recsys.artifact import HISTORIES, MANIFEST, USERS, read_manifest, write_jsonl
from recsys.errors import FailedPrecondition
from recsys.schema import FeatureContract, FeatureKind, FeatureSpec
from recsys.v1 import features_pb2, features_pb2_grpc
from tests.feature_service.conftest import SCHEMA, write_artifact


def reads(path: Path, user: tuple[str, ...] = (), item: tuple[str, ...] = (), created_at: str = "") -> Path:
    """Makes the artifact at `path` a ranker reading these features (manifest training.inputs)."""
    manifest = read_manifest(path)
    inputs = {"user_cat": list(user), "user_num": [], "item_cat": [], "item_num": [], "item_multi": list(item)}
    manifest = dataclasses.replace(
        manifest, training={"inputs": inputs}, created_at=created_at or manifest.created_at, model_version=path.name
    )
    (path / MANIFEST).write_text(manifest.to_json())
    return path


def with_country(path: Path) -> Path:
    """The artifact with one more user feature (a retrain on a table with a new column)."""
    schema = dataclasses.replace(
        SCHEMA, user_features=(*SCHEMA.user_features, FeatureSpec("country", FeatureKind.CATEGORICAL, ("FR",)))
    )
    write_artifact(path, schema)
    write_jsonl(path / USERS, [{"user_id": "u1", "features": {"age": 24, "gender": "M", "country": "FR"}}])
    return path


def test_needs_come_from_the_model_inputs(tmp_path: Path) -> None:
    sasrec = read_manifest(write_artifact(tmp_path / "sasrec"))
    assert sasrec.needs.user == {} and sasrec.needs.item == {}  # history only: any store feeds it
    ranker = read_manifest(reads(write_artifact(tmp_path / "r"), user=("gender",), item=("genres",)))
    assert ranker.needs.user == {"gender": FeatureKind.CATEGORICAL}
    assert ranker.needs.item == {"genres": FeatureKind.MULTI_CATEGORICAL}


def test_problems_name_missing_and_retyped_features() -> None:
    served = FeatureContract({"age": FeatureKind.NUMERIC, "extra": FeatureKind.TEXT})
    assert served.problems(FeatureContract({"age": FeatureKind.NUMERIC})) == []  # extra features are fine
    assert served.problems(FeatureContract({"age": FeatureKind.CATEGORICAL, "zip": FeatureKind.CATEGORICAL})) == [
        "user feature 'age' is served as numeric, the model reads categorical",
        "user feature 'zip' (categorical) is not served",
    ]


def test_a_load_adds_features_and_never_changes_a_kind(tmp_path: Path) -> None:
    with MemoryStore() as store:
        load_artifact(store, write_artifact(tmp_path / "a1"))
        load_artifact(store, with_country(tmp_path / "a2"))
        assert stored_contract(store).user == {
            "age": FeatureKind.NUMERIC,
            "gender": FeatureKind.CATEGORICAL,
            "country": FeatureKind.CATEGORICAL,
        }
        retyped = dataclasses.replace(
            SCHEMA, user_features=(FeatureSpec("age", FeatureKind.CATEGORICAL, ("young", "old")),)
        )
        bad = write_artifact(tmp_path / "a3", retyped)
        write_jsonl(bad / USERS, [])
        with pytest.raises(FailedPrecondition, match="'age' is numeric in the store and categorical in the artifact"):
            load_artifact(store, bad)
        assert stored_contract(store).user["age"] is FeatureKind.NUMERIC  # nothing written


def test_a_feature_is_removed_only_once_no_registered_model_reads_it(tmp_path: Path) -> None:
    with MemoryStore() as store:
        load_artifact(store, reads(with_country(tmp_path / "v1"), user=("gender", "country")))
        load_artifact(store, reads(write_artifact(tmp_path / "v2"), user=("gender",)))
        assert set(registered_models(store)) == {"v1", "v2"}
        with pytest.raises(FailedPrecondition, match=r"user feature 'country' is read by model\(s\) v1"):
            remove_feature(store, "user", "country")
        with pytest.raises(FailedPrecondition, match="serves no item feature 'nope'"):
            remove_feature(store, "item", "nope")
        assert release_model(store, "v1") and not release_model(store, "v1")
        assert "country" not in remove_feature(store, "user", "country").user
        assert "country" not in stored_contract(store).user


def test_a_load_keeps_rows_written_after_the_artifact_was_exported(tmp_path: Path) -> None:
    """A restart with --artifact must not put the artifact's old values back."""
    exported = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    artifact = reads(write_artifact(tmp_path / "a"), created_at=exported)
    with SqliteStore(tmp_path / "f.db") as store:
        load_artifact(store, artifact)
        store.put_users([("u1", {"age": 99, "gender": "F"})])  # an acknowledged UpdateUserFeatures
        report = load_artifact(store, artifact)
        assert report.users_written == 0
        assert store.get_users(["u1"], 0)[0].features == {"age": 99, "gender": "F"}
        # a newer export does replace it (the offline table changed after the online write)
        newer = reads(write_artifact(tmp_path / "b"), created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        time.sleep(1.1)  # store clocks count whole seconds
        manifest = read_manifest(newer)
        later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5))
        (newer / MANIFEST).write_text(dataclasses.replace(manifest, created_at=later).to_json())
        assert load_artifact(store, newer).users_written == 1
        assert store.get_users(["u1"], 0)[0].features == {"age": 24, "gender": "M"}


def test_a_restart_with_the_artifact_keeps_an_acknowledged_update(tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "a")  # says nothing of when it was made: adds only what is missing
    url = f"sqlite://{tmp_path}/f.db"
    update = features_pb2.UpdateUserFeaturesRequest(
        rows=[features_pb2.FeatureRow(id="u1", features={"age": {"number": 61.0}, "gender": {"category": "F"}})]
    )
    for restart in range(2):
        server, port, _, core = create_feature_server(artifact, url, host="127.0.0.1")
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = features_pb2_grpc.FeatureServiceStub(channel)
                if restart == 0:
                    assert stub.UpdateUserFeatures(update, timeout=5).updated == 1
                reply = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u1"]), timeout=5)
                assert reply.users[0].features["age"].number == 61.0
        finally:
            server.stop(None)
            core.close()


def other_dataset(path: Path) -> Path:
    """The same ids, other events: another dataset whose users happen to be named alike."""
    write_artifact(path)
    write_jsonl(
        path / HISTORIES,
        [
            {"user_id": "u1", "item_ids": ["i9", "i8"], "timestamps": [170, 350]},
            {"user_id": "u2", "item_ids": ["i7"], "timestamps": [150]},
        ],
    )
    return path


def test_a_store_holding_another_dataset_is_refused_unless_asked(tmp_path: Path) -> None:
    with MemoryStore() as store:
        load_artifact(store, write_artifact(tmp_path / "ml"))
        other = other_dataset(tmp_path / "other")
        with pytest.raises(FailedPrecondition, match="holds another dataset: for 2 users .* only 0 of 3 events"):
            load_artifact(store, other)
        assert store.get_users(["u1"], 10)[0].history == ["i1", "i2", "i3", "i4"]  # nothing mixed in
        load_artifact(store, other, mode="replace")
        assert store.get_users(["u1"], 10)[0].history == ["i9", "i8"]
        # --merge adds whatever the store holds
        assert load_artifact(store, write_artifact(tmp_path / "ml2"), mode="merge").events_recorded == 5
        assert len(store.get_users(["u1"], 10)[0].history) == 6


def test_grown_data_is_the_same_dataset(tmp_path: Path) -> None:
    """A retrain on more data (events kept, new ones after) loads without --merge, and so does
    an artifact exported before events the service recorded since."""
    with MemoryStore() as store:
        load_artifact(store, write_artifact(tmp_path / "day1"))
        from feature_service.stores.base import Event

        store.append_events([Event("u1", "i1", 10_000)])  # recorded online after the export
        grown = write_artifact(tmp_path / "day2")
        rows = [
            {"user_id": "u1", "item_ids": ["i1", "i2", "i3", "i4", "i2"], "timestamps": [100, 200, 300, 400, 500]},
            {"user_id": "u2", "item_ids": ["i2"], "timestamps": [150]},
        ]
        write_jsonl(grown / HISTORIES, rows)
        assert load_artifact(store, grown).events_recorded == 1


def test_the_running_service_serves_what_a_load_added(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/f.db"
    server, port, _, core = create_feature_server(
        write_artifact(tmp_path / "a1"), url, host="127.0.0.1", health_interval_s=0.05
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = features_pb2_grpc.FeatureServiceStub(channel)
            before = stub.GetSchema(features_pb2.GetSchemaRequest(), timeout=5)
            update = features_pb2.UpdateUserFeaturesRequest(
                rows=[features_pb2.FeatureRow(id="u9", features={"country": {"category": "FR"}})]
            )
            with pytest.raises(grpc.RpcError) as info:
                stub.UpdateUserFeatures(update, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with SqliteStore(tmp_path / "f.db") as other_process:  # `recsys features load` elsewhere
                load_artifact(other_process, with_country(tmp_path / "a2"))
            deadline = time.monotonic() + 5
            while stub.GetSchema(features_pb2.GetSchemaRequest(), timeout=5).schema_hash == before.schema_hash:
                assert time.monotonic() < deadline, "the service did not pick up the grown contract"
                time.sleep(0.02)
            assert stub.UpdateUserFeatures(update, timeout=5).updated == 1
            reply = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u9"]), timeout=5)
            assert reply.schema_hash == core.contract_hash and reply.users[0].features["country"].category == "FR"
            assert json.loads(stub.GetSchema(features_pb2.GetSchemaRequest(), timeout=5).schema_json)["user_features"]
    finally:
        server.stop(None)
        core.close()
