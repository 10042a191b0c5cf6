"""load_artifact: counts, idempotency, and refusal of rows that do not fit the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feature_service.loader import load_artifact, stored_contract
from feature_service.stores import MemoryStore
from recsys.artifact import HISTORIES, ITEMS, USERS
from recsys.errors import FailedPrecondition


def test_load_is_idempotent(artifact_dir: Path) -> None:
    with MemoryStore() as store:
        first = load_artifact(store, artifact_dir)
        assert (first.users_written, first.items_written, first.events_recorded, first.duplicates) == (2, 4, 5, 0)
        second = load_artifact(store, artifact_dir)
        assert (second.users_written, second.items_written, second.events_recorded, second.duplicates) == (0, 0, 0, 5)
        u1, u2, u3 = store.get_users(["u1", "u2", "u3"], 10)
        assert u1.history == ["i1", "i2", "i3", "i4"] and u1.features == {"age": 24, "gender": "M"}
        assert u2.features == {} and u2.history == ["i2"]
        assert u3.history == []
        assert "5 duplicate events skipped" in str(second)


def test_missing_files_load_nothing(artifact_dir: Path) -> None:
    for name in (HISTORIES, USERS, ITEMS):
        (artifact_dir / name).unlink()
    with MemoryStore() as store:
        report = load_artifact(store, artifact_dir)
    assert (report.users_written, report.items_written, report.events_recorded) == (0, 0, 0)


@pytest.mark.parametrize(
    ("file", "row", "message"),
    [
        (
            USERS,
            {"user_id": "u9", "features": {"height": 1.8}},
            "users.jsonl line 3: feature 'height' is not in the schema",
        ),
        (USERS, {"user_id": "u9", "features": {"age": "old"}}, "feature 'age' is numeric"),
        (USERS, {"user_id": "u9", "features": {"gender": 1}}, "feature 'gender' is categorical"),
        (USERS, {"features": {}}, "'user_id' is missing"),
        (ITEMS, {"item_id": "i9", "features": {"genres": "Action"}}, "feature 'genres' is multi_categorical"),
        (ITEMS, {"item_id": "i9", "features": {"title": ["a"]}}, "feature 'title' is text"),
        (HISTORIES, {"user_id": "u9", "item_ids": ["i1"], "timestamps": []}, "histories.jsonl line 3: .* equal length"),
        (HISTORIES, {"user_id": "u9", "item_ids": ["i1"], "timestamps": [1.5]}, "bad event"),
    ],
)
def test_rows_that_do_not_fit_are_refused(artifact_dir: Path, file: str, row: dict, message: str) -> None:
    with open(artifact_dir / file, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    with MemoryStore() as store, pytest.raises(FailedPrecondition, match=message):
        load_artifact(store, artifact_dir)


def test_bad_feature_file_writes_nothing(artifact_dir: Path) -> None:
    with open(artifact_dir / ITEMS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"item_id": "i9", "features": {"nope": 1}}) + "\n")
    with MemoryStore() as store:
        with pytest.raises(FailedPrecondition):
            load_artifact(store, artifact_dir)
        assert store.get_users(["u1"], 10) == [None] and store.get_items(["i1"]) == [None]


def test_forgotten_users_are_not_loaded_back(artifact_dir: Path) -> None:
    with MemoryStore() as store:
        store.forget_user("u1")
        report = load_artifact(store, artifact_dir)
        assert (report.users_written, report.events_recorded, report.forgotten_skipped) == (1, 1, 1)
        assert "1 forgotten users skipped" in str(report) and report.to_dict()["forgotten_skipped"] == 1
        assert store.get_users(["u1", "u2", "u3"], 10)[0] is None


def test_only_the_newest_events_a_store_keeps_are_loaded(artifact_dir: Path) -> None:
    with MemoryStore(max_events=2) as store:
        assert load_artifact(store, artifact_dir).events_recorded == 3  # u1's newest 2, u2's 1
        assert store.get_users(["u1"], 10)[0].history == ["i3", "i4"]
        again = load_artifact(store, artifact_dir)
        assert (again.events_recorded, again.duplicates) == (0, 3)


def test_load_records_the_contract(artifact_dir: Path, schema) -> None:
    with MemoryStore() as store:
        with pytest.raises(FailedPrecondition, match="holds no artifact"):
            stored_contract(store)
        load_artifact(store, artifact_dir)
        assert stored_contract(store) == schema.contract()
