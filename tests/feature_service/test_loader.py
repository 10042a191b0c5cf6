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
        (HISTORIES, {"user_id": "u9", "item_ids": ["i1", "i2"], "timestamps": [1, True]}, r"bad event \('i2', True\)"),
        (HISTORIES, {"user_id": "u9", "item_ids": ["i1", ""], "timestamps": [1, 2]}, r"bad event \('', 2\)"),
        (HISTORIES, {"user_id": "u9", "item_ids": [7], "timestamps": [1]}, r"bad event \(7, 1\)"),
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


def test_progress_reports_events_done_of_the_total(artifact_dir: Path) -> None:
    calls: list[tuple[int, int]] = []
    with MemoryStore() as store:
        store.forget_user("u2")
        load_artifact(store, artifact_dir, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 5) and calls[-1] == (5, 5)  # u2's forgotten event counts as done
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_events_go_in_the_store_batch_size(artifact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    store = MemoryStore()
    original = store.append_event_columns

    def spy(users, items, stamps):
        sizes.append(len(users))
        return original(users, items, stamps)

    monkeypatch.setattr(store, "append_event_columns", spy)
    monkeypatch.setattr(store, "event_batch", 3)
    with store:
        report = load_artifact(store, artifact_dir)
    assert sizes == [4, 1] and report.events_recorded == 5  # whole lines: u1's 4, then u2's 1


def test_count_events_reads_the_text_and_falls_back_to_json(tmp_path: Path) -> None:
    from feature_service.loader import count_events

    path = tmp_path / HISTORIES
    path.write_text(
        json.dumps({"user_id": "a", "item_ids": ["x", "y"], "timestamps": [1, 2]})
        + "\n"
        + json.dumps({"user_id": "b", "item_ids": [], "timestamps": []})
        + "\n\n"
        + '{"timestamps":[3,4,5],"user_id":"c","item_ids":["x","y","z"]}\n'
        + json.dumps({"user_id": "d", "timestamps": [1.5], "item_ids": ["x"]})
        + "\n"
    )
    assert count_events(path) == 6
    assert count_events(tmp_path / "absent.jsonl") == 0


def test_cli_progress_goes_to_stderr_and_quiet_silences_it(artifact_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from recsys.cli import main

    url = f"sqlite://{tmp_path}/features.db"
    shown = CliRunner().invoke(
        main, ["features", "load", "--artifact", str(artifact_dir), "--store", url, "--progress"]
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["duplicates"] == 0
    assert "5/5 (100%)" in shown.stderr and "events/s" in shown.stderr
    quiet = CliRunner().invoke(main, ["features", "load", "--artifact", str(artifact_dir), "--store", url, "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and json.loads(quiet.stdout)["duplicates"] == 5
