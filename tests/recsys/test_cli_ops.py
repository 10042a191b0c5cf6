"""Everyday operations through the CLI: events and feature rows sent to a real feature server
on port 0, column mapping of the tables commands read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from feature_service.server import create_feature_server
from recsys.cli import main
from recsys.feature_values import from_proto_map
from recsys.v1 import features_pb2, features_pb2_grpc
from tests.feature_service.conftest import write_artifact


@pytest.fixture
def feature_server(tmp_path: Path) -> Iterator[tuple[str, features_pb2_grpc.FeatureServiceStub]]:
    server, port, _health, core = create_feature_server(write_artifact(tmp_path / "artifact"), host="127.0.0.1")
    target = f"127.0.0.1:{port}"
    with grpc.insecure_channel(target) as channel:
        yield target, features_pb2_grpc.FeatureServiceStub(channel)
    server.stop(None)
    core.close()


def history(stub, user: str) -> list[tuple[str, int]]:
    (found,) = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=[user])).users
    return list(zip(found.history, found.history_timestamps))


def invoke(*args: str, stdin: str | None = None):
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result


def test_events_record_from_arguments(feature_server) -> None:
    target, stub = feature_server
    result = invoke("events", "record", "--features", target, "u9", "i2", "1000")
    assert json.loads(result.output) == {"recorded": 1, "duplicates": 0}
    assert history(stub, "u9") == [("i2", 1000)]
    result = invoke("events", "record", "--features", target, "u9", "i2", "1000")
    assert json.loads(result.output) == {"recorded": 0, "duplicates": 1}
    invoke("events", "record", "--features", target, "u9", "i3")  # timestamp: now
    assert history(stub, "u9")[-1][0] == "i3" and history(stub, "u9")[-1][1] > 1_600_000_000


def test_events_record_a_file_in_batches(feature_server, tmp_path: Path, monkeypatch) -> None:
    import recsys.cli.events

    monkeypatch.setattr(recsys.cli.events, "BATCH", 2)
    target, stub = feature_server
    table = tmp_path / "events.csv"
    table.write_text("customer;product;when\nu7;i1;100\nu7;i2;1970-01-01T00:03:20Z\nu7;i3;300\n")
    columns = "user_id=customer,item_id=product,timestamp=when"
    result = invoke("events", "record", "--features", target, "--file", str(table), "--columns", columns)
    assert json.loads(result.output) == {"recorded": 3, "duplicates": 0}
    assert history(stub, "u7") == [("i1", 100), ("i2", 200), ("i3", 300)]
    # stdin, tab-separated, with event ids: an id already recorded is a duplicate
    rows = "user_id\titem_id\ttimestamp\tevent_id\nu8\ti1\t5\te1\nu8\ti2\t6\te1\n"
    result = invoke("events", "record", "--features", target, "--file", "-", stdin=rows)
    assert json.loads(result.output) == {"recorded": 1, "duplicates": 1}


def test_events_record_refuses_a_file_without_the_columns(feature_server, tmp_path: Path) -> None:
    table = tmp_path / "events.csv"
    table.write_text("customer_id,product_id,event_time\nu7,i1,100\n")
    result = CliRunner().invoke(main, ["events", "record", "--features", feature_server[0], "--file", str(table)])
    assert result.exit_code == 1
    assert "--columns" in result.output and "customer_id" in result.output, result.output


def test_events_record_reports_an_unreachable_server() -> None:
    from recsys.client import free_port

    target = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["events", "record", "--features", target, "--timeout", "0.5", "u", "i"])
    assert result.exit_code == 1 and f"{target}: " in result.output, result.output


def test_features_update_types_cells_by_the_service_contract(feature_server, tmp_path: Path) -> None:
    target, stub = feature_server
    items = tmp_path / "items.tsv"
    items.write_text("product\ttitle\tgenres\ni9\t187\tAction|Drama\ni1\tToy Story (1995)\t\n")
    result = invoke("features", "update", "--features", target, "--items", str(items), "--columns", "item_id=product")
    assert json.loads(result.output) == {"updated": 2}
    got = stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=["i9", "i1"])).items
    assert from_proto_map(got[0].features) == {"title": "187", "genres": ["Action", "Drama"]}
    assert got[0].features["title"].WhichOneof("value") == "text"
    assert from_proto_map(got[1].features) == {"title": "Toy Story (1995)"}  # blank: left out
    users = "user_id;age;gender\nu1;31;F\n"
    result = invoke("features", "update", "--features", target, "--users", "-", stdin=users)
    assert json.loads(result.output) == {"updated": 1}
    (u1,) = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u1"])).users
    assert from_proto_map(u1.features) == {"age": 31.0, "gender": "F"}


@pytest.mark.parametrize(
    ("rows", "message"),
    [("user_id,age\nu1,old\n", "age is numeric"), ("user_id,shoe_size\nu1,44\n", "serves no feature 'shoe_size'")],
)
def test_features_update_refuses_cells_the_contract_does_not_take(feature_server, rows: str, message: str) -> None:
    args = ["features", "update", "--features", feature_server[0], "--users", "-"]
    result = CliRunner().invoke(main, args, input=rows)
    assert result.exit_code == 1 and message in result.output, result.output


def _renamed(source: Path, target: Path, names: dict[str, str], sep: str) -> Path:
    import pandas as pd

    pd.read_csv(source, dtype=str).rename(columns=names).to_csv(target, sep=sep, index=False)
    return target


@pytest.mark.slow
def test_train_from_a_semicolon_file_with_your_column_names(ring_data, tmp_path: Path) -> None:
    names = {"user_id": "customer_id", "item_id": "product_id", "timestamp": "event_time"}
    interactions = _renamed(ring_data["train"], tmp_path / "events.csv", names, ";")
    items = _renamed(ring_data["items"], tmp_path / "products.csv", names, ";")
    config = tmp_path / "train.toml"
    config.write_text("epochs = 2\nbatch_size = 32\nmax_len = 10\nhidden = 16\nlayers = 1\ninner = 32\n")
    common = ["train", "--interactions", str(interactions), "--items", str(items), "--config", str(config), "--quiet"]
    result = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "--columns" in result.output and "'customer_id', 'product_id', 'event_time'" in result.output, result.output
    columns = ",".join(f"{standard}={yours}" for standard, yours in names.items())
    quiet = invoke(*common, "--out", str(tmp_path / "artifact"), "--columns", columns)
    manifest = json.loads((tmp_path / "artifact" / "manifest.json").read_text())
    # --quiet: one line, naming what was written
    assert quiet.output == f"wrote {tmp_path / 'artifact'} ({manifest['model_version']})\n"
    assert manifest["num_items"] == 40 and {f["name"] for f in manifest["schema"]["item_features"]} >= {"genres"}


def test_data_split_maps_columns_of_a_tab_separated_file(ring_data, tmp_path: Path) -> None:
    names = {"user_id": "who", "item_id": "what", "timestamp": "when"}
    interactions = _renamed(ring_data["interactions"], tmp_path / "events.csv", names, "\t")
    result = invoke(
        "data",
        "split",
        "--interactions",
        str(interactions),
        "--out",
        str(tmp_path / "split"),
        "--columns",
        "user_id=who,item_id=what,timestamp=when",
    )
    split = json.loads(result.output)
    assert split["users"] == 80 and split["test_rows"] == 80
    assert (tmp_path / "split" / "test.csv").read_text().startswith("user_id,item_id,timestamp")


def test_evaluate_maps_the_test_file_columns(trained_artifact, ring_data, tmp_path: Path) -> None:
    import pandas as pd

    test = pd.read_csv(ring_data["test"]).rename(columns={"user_id": "customer_id", "item_id": "product_id"})
    test.to_csv(tmp_path / "test.csv", index=False)
    args = ["evaluate", "--artifact", str(trained_artifact), "--test", str(tmp_path / "test.csv"), "--json"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0 and "--columns" in refused.output, refused.output
    result = CliRunner().invoke(main, [*args, "--columns", "user_id=customer_id,item_id=product_id"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["cases"] == 80 and metrics["ndcg@10"] > metrics["popularity_ndcg@10"]
