"""docker/retrain.sh, the recipe the trainer image runs in compose and Kubernetes, run here with
POSIX sh against the installed `recsys`: it trains on the tables it finds, loads the store,
publishes the next version, leaves no artifact behind, and refuses a missing interactions table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from inference_server.repository import ModelRepository

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "retrain.sh"
BIN = Path(sys.executable).parent  # where `recsys` is installed
# a small, fast SASRec: `recsys train` reads these itself
SMALL = {
    "RECSYS_TRAIN_HIDDEN": "16",
    "RECSYS_TRAIN_HEADS": "1",
    "RECSYS_TRAIN_INNER": "32",
    "RECSYS_TRAIN_MAX_LEN": "10",
}


def retrain(tmp_path: Path, data: Path, **settings: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        **SMALL,
        "RECSYS_DATA": str(data),
        "RECSYS_EPOCHS": "1",
        "RECSYS_STORE_URL": f"sqlite:///{tmp_path}/features.sqlite",
        "RECSYS_REPO": str(tmp_path / "models"),
        "RECSYS_WORKDIR": str(tmp_path / "work"),
        **settings,
    }
    return subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600, check=False)


def test_trains_loads_and_publishes_on_the_tables_it_finds(ring_data, tmp_path):
    data = tmp_path / "day one"  # paths with spaces survive
    data.mkdir()
    shutil.copy(ring_data["interactions"], data / "events.csv")
    shutil.copy(ring_data["items"], data / "items.csv")  # and no users.csv: trained without it

    run = retrain(tmp_path, data, RECSYS_INTERACTIONS="events.csv", RECSYS_MODEL_NAME="daily")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    published = json.loads(run.stdout.strip().splitlines()[-1])
    assert published["model"] == "daily" and published["version"] == 1
    assert ModelRepository(tmp_path / "models").versions("daily") == [1]
    assert "--items" in run.stdout and "--users" not in run.stdout
    contract = subprocess.run(
        [BIN / "recsys", "features", "contract", "--store", f"sqlite:///{tmp_path}/features.sqlite"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert contract.returncode == 0, contract.stderr
    assert "genres" in contract.stdout  # the items table's feature is served
    assert list((tmp_path / "work").iterdir()) == []  # the artifact is gone once published

    again = retrain(tmp_path, data, RECSYS_INTERACTIONS="events.csv", RECSYS_MODEL_NAME="daily")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert ModelRepository(tmp_path / "models").versions("daily") == [1, 2]


def test_a_missing_interactions_table_fails_before_anything_is_written(tmp_path):
    run = retrain(tmp_path, tmp_path / "empty")
    assert run.returncode == 2
    assert "no interactions table" in run.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "features.sqlite").exists()
