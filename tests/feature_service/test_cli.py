"""`recsys features load | forget | forgotten` through click, over a SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from recsys.cli import main


def test_load_forget_forgotten(artifact_dir: Path, tmp_path: Path) -> None:
    runner, url = CliRunner(), f"sqlite://{tmp_path}/features.db"
    first = runner.invoke(main, ["features", "load", "--artifact", str(artifact_dir), "--store", url])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["events_recorded"] == 5
    again = json.loads(
        runner.invoke(main, ["features", "load", "--artifact", str(artifact_dir), "--store", url]).output
    )
    assert (again["users_written"], again["events_recorded"], again["duplicates"]) == (0, 0, 5)

    forgot = runner.invoke(main, ["features", "forget", "--store", url, "u1", "nobody"])
    assert forgot.exit_code == 0, forgot.output
    assert [json.loads(line) for line in forgot.output.splitlines()] == [
        {"user_id": "u1", "found": True},
        {"user_id": "nobody", "found": False},
    ]
    out = tmp_path / "forgotten.jsonl"
    listed = runner.invoke(main, ["features", "forgotten", "--store", url, "--out", str(out)])
    assert listed.exit_code == 0 and "2 forgotten users" in listed.output
    assert {json.loads(line)["user_id"] for line in out.read_text().splitlines()} == {"u1", "nobody"}

    reloaded = json.loads(
        runner.invoke(main, ["features", "load", "--artifact", str(artifact_dir), "--store", url]).output
    )
    assert reloaded["forgotten_skipped"] == 1 and reloaded["events_recorded"] == 0


def test_bad_store_url_is_a_clear_error(artifact_dir: Path) -> None:
    result = CliRunner().invoke(main, ["features", "load", "--artifact", str(artifact_dir), "--store", "bogus://x"])
    assert result.exit_code == 1 and "unknown feature store URL 'bogus://x'" in result.output


def test_an_unreachable_store_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["features", "forgotten", "--store", "redis://127.0.0.1:1/0", "--out", str(tmp_path / "gone.jsonl")]
    )
    assert result.exit_code == 1 and result.output.startswith("Error: redis://127.0.0.1:1/0: ")
