"""Day two against real servers: retrain on grown data (new items, new users, a new user feature
column), publish, load the features, restart the feature service, all while a client keeps
asking. The new version must end up serving with no failed request, and a feature a model reads
cannot be removed from the store."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pandas as pd
import pytest
from click.testing import CliRunner

from feature_service.server import create_feature_server
from inference_server.server import start_inference_service
from recsys.cli import main
from recsys.v1 import features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc
from tests.conftest import write_ring_data

NEW_ITEMS = 23


def grow(day1: dict[str, Path], out: Path) -> dict[str, Path]:
    """Day 2: day 1's events plus newer ones, 10 new users, 23 new items, a `country` column."""
    day2 = write_ring_data(out, seed=1, users=70, items=40 + NEW_ITEMS)
    old = pd.read_csv(day1["interactions"])
    new = pd.read_csv(day2["interactions"])
    new["timestamp"] += int(old["timestamp"].max())  # later than everything day 1 held
    pd.concat([old, new]).to_csv(day2["interactions"], index=False)
    users = pd.read_csv(day2["users"])
    users["country"] = ["FR", "DE", "JP", "BR", "US"] * (len(users) // 5)
    users.to_csv(day2["users"], index=False)
    return day2


def train_sasrec(data: dict[str, Path], out: Path) -> Path:
    from trainer.families.next_item import TrainConfig
    from trainer.pipeline import train_and_export

    cfg = TrainConfig(epochs=3, batch_size=64, max_len=10, hidden=16, heads=1, layers=1, inner=32, seed=0)
    train_and_export(
        data["interactions"], out, cfg, users=data["users"], items=data["items"], progress=False, log=lambda *_: None
    )
    return out


def train_deepfm(data: dict[str, Path], out: Path) -> Path:
    from trainer.export.ranker import train_and_export_ranker
    from trainer.families.ranker import RankConfig

    cfg = RankConfig(model="deepfm", label="implicit", negatives=2, history_len=10, epochs=2, batch_size=128, seed=0)
    train_and_export_ranker(
        cfg, data["interactions"], out, users=data["users"], items=data["items"], progress=False, log=lambda *_: None
    )
    return out


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("days")
    day1 = write_ring_data(root / "day1", users=60, items=40)
    day2 = grow(day1, root / "day2")
    return {"day1": day1, "day2": day2, "root": root}


class Client(threading.Thread):
    """Asks Recommend for every user in turn until stopped; keeps every failure and the
    versions that answered."""

    def __init__(self, port: int, users: list[str]) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.users = users
        self.stop = threading.Event()
        self.requests = 0
        self.failures: list[str] = []
        self.versions: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            request = inference_pb2.RecommendRequest(user_id=self.users[n % len(self.users)], k=5, exclude_seen=True)
            try:
                reply = self.stub.Recommend(request, timeout=5)
                self.versions.append(reply.model_version)
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            self.requests += 1
            n += 1
            time.sleep(0.002)

    def finish(self) -> None:
        self.stop.set()
        self.join(10)
        self.channel.close()


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def wait_for(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        time.sleep(0.05)


def serve(first: Path, model: str, tmp_path: Path):
    """Version 1 = `first` published, a feature service over a SQLite store loaded with it, an
    inference server over the repository, and a client asking: (store URL, repo, feature
    server, its port and core, inference service, client)."""
    store, repo = f"sqlite://{tmp_path}/features.sqlite", tmp_path / "repo"
    cli("publish", "--artifact", str(first), "--repo", str(repo), "--model", model)
    fserver, fport, _, fcore = create_feature_server(first, store, host="127.0.0.1", health_interval_s=0.1)
    service = start_inference_service(
        None,
        f"127.0.0.1:{fport}",
        repo=repo,
        model=model,
        host="127.0.0.1",
        watch_interval_s=0.1,
        health_interval_s=0.1,
    )
    client = Client(service.port, [f"u{u:03d}" for u in range(70)])
    client.start()
    return store, repo, fserver, fport, fcore, service, client


def test_retrain_with_new_items_publish_load_restart_no_failed_request(days, tmp_path: Path) -> None:
    a1 = train_sasrec(days["day1"], tmp_path / "a1")
    a2 = train_sasrec(days["day2"], tmp_path / "a2")
    store, repo, fserver, fport, fcore, service, client = serve(a1, "sasrec", tmp_path)
    try:
        wait_for(lambda: client.requests > 20, what="first answers")
        # 1. publish the retrained version: the store serves everything it reads (it reads no
        #    feature), so it goes in although the store does not hold its new items yet
        cli("publish", "--artifact", str(a2), "--repo", str(repo), "--model", "sasrec")
        wait_for(lambda: service.manager.current.version == 2, what="version 2 serving")
        # 2. load its features into the running service's store: new items and users, new column
        cli("features", "load", "--artifact", str(a2), "--store", store)
        with grpc.insecure_channel(f"127.0.0.1:{fport}") as channel:
            stub = features_pb2_grpc.FeatureServiceStub(channel)

            def serves_country() -> bool:
                reply = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u065"]), timeout=5)
                return reply.users[0].found and "country" in reply.users[0].features

            wait_for(serves_country, what="the new user and column served")
            new_item = stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=["m62"]), timeout=5)
            assert new_item.items[0].found
        # 3. restart the feature service on the same store and port
        fserver.stop(None).wait()
        fcore.close()
        fserver, _, _, fcore = create_feature_server(a2, store, host="127.0.0.1", port=fport, health_interval_s=0.1)
        done = client.requests
        wait_for(lambda: client.requests > done + 50, what="answers after the restart")
    finally:
        client.finish()
        service.stop(None)
        fserver.stop(None)
        fcore.close()
    assert client.failures == []
    assert client.versions[-1].startswith("sasrec/2:")
    # the new version knows the new items, the old did not
    assert service.manager.current.recommender.manifest.num_items == 40 + NEW_ITEMS


def test_a_new_feature_column_waits_for_the_store_and_a_read_feature_cannot_be_removed(days, tmp_path: Path) -> None:
    r1 = train_deepfm(days["day1"], tmp_path / "r1")
    r2 = train_deepfm(days["day2"], tmp_path / "r2")
    store, repo, fserver, _, fcore, service, client = serve(r1, "deepfm", tmp_path)
    try:
        wait_for(lambda: client.requests > 10, what="first answers")
        # published before the store serves `country`: not loaded yet, not rejected
        cli("publish", "--artifact", str(r2), "--repo", str(repo), "--model", "deepfm")
        time.sleep(0.5)
        status = service.manager.status()
        assert status["serving_version"] == 1 and 2 not in status["rejected"]
        # the store learns the column: the watcher takes version 2 on its next round
        cli("features", "load", "--artifact", str(r2), "--store", store)
        wait_for(lambda: service.manager.current.version == 2, what="version 2 serving")
        done = client.requests
        wait_for(lambda: client.requests > done + 20, what="answers from version 2")
    finally:
        client.finish()
        service.stop(None)
        fserver.stop(None)
        fcore.close()
    assert client.failures == []
    assert client.versions[-1].startswith("deepfm/2:")
    # `country` is read by version 2: removing it is refused, naming the model
    result = CliRunner().invoke(main, ["features", "remove-feature", "--store", store, "user:country"])
    assert result.exit_code == 1
    assert "user feature 'country' is read by model(s)" in result.output and "recsys features release" in result.output
    from recsys.artifact import read_manifest

    cli("features", "release", "--store", store, read_manifest(r2).model_version)
    assert "removed" in cli("features", "remove-feature", "--store", store, "user:country")
