"""Session-wide fixtures: small generated data with sequential structure, trained artifacts, and
both services started through the `recsys` command.

Users walk a ring of items: after item i usually comes item i+1, so a sequential model can
learn something real in a few seconds and tests can check that it did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

NUM_ITEMS = 40
NUM_USERS = 80


def write_ring_data(
    directory: Path, *, seed: int = 0, users: int = NUM_USERS, items: int = NUM_ITEMS
) -> dict[str, Path]:
    """interactions.csv (user_id,item_id,timestamp,rating), users.csv, items.csv in `directory`."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        start = int(rng.integers(0, items))
        length = int(rng.integers(8, 20))
        t = 1_000_000 + int(rng.integers(0, 10_000))
        for step in range(length):
            item = (start + step) % items
            if rng.random() < 0.1:  # a little noise
                item = int(rng.integers(0, items))
            t += int(rng.integers(1, 100))
            rows.append((f"u{u:03d}", f"m{item:02d}", t, float(rng.integers(1, 6))))
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "interactions": directory / "interactions.csv",
        "users": directory / "users.csv",
        "items": directory / "items.csv",
    }
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]).to_csv(paths["interactions"], index=False)
    pd.DataFrame(
        {
            "user_id": [f"u{u:03d}" for u in range(users)],
            "age": rng.integers(18, 70, users),
            "gender": rng.choice(["F", "M"], users),
        }
    ).to_csv(paths["users"], index=False)
    pd.DataFrame(
        {
            "item_id": [f"m{i:02d}" for i in range(items)],
            "title": [f"Movie {i}" for i in range(items)],
            "genres": [["Action", "Comedy|Drama", "Drama"][i % 3] for i in range(items)],
        }
    ).to_csv(paths["items"], index=False)
    return paths


def leave_last_out(interactions: Path, directory: Path) -> tuple[Path, Path]:
    """Splits a table into train (all but each user's last event) and test (the last event)."""
    df = pd.read_csv(interactions, dtype={"user_id": str, "item_id": str})
    df = df.sort_values("timestamp", kind="stable")
    last = df.groupby("user_id").tail(1).index
    train, test = directory / "train.csv", directory / "test.csv"
    df.drop(index=last).to_csv(train, index=False)
    df.loc[last, ["user_id", "item_id"]].to_csv(test, index=False)
    return train, test


@pytest.fixture(scope="session")
def ring_data(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("ring")
    paths = write_ring_data(directory)
    paths["train"], paths["test"] = leave_last_out(paths["interactions"], directory)
    return paths


@pytest.fixture(scope="session")
def trained_artifact(ring_data, tmp_path_factory) -> Path:
    """A small SASRec trained on the ring data's train split and exported."""
    from trainer.families.next_item import TrainConfig
    from trainer.pipeline import train_and_export

    out = tmp_path_factory.mktemp("artifacts") / "sasrec"
    cfg = TrainConfig(
        epochs=40,
        batch_size=32,
        max_len=10,
        hidden=32,
        heads=2,
        layers=1,
        inner=64,
        dropout=0.1,
        lr=5e-3,
        eval_every=5,
        patience=3,
        seed=0,
    )
    train_and_export(
        ring_data["train"],
        out,
        cfg,
        users=ring_data["users"],
        items=ring_data["items"],
        progress=False,
        log=lambda *_: None,
    )
    return out


@pytest.fixture(scope="session")
def ranker_artifact(ring_data, tmp_path_factory) -> Path:
    """A small DeepFM (implicit labels) on the same ring data and tables as `trained_artifact`."""
    from trainer.export.ranker import train_and_export_ranker
    from trainer.families.ranker import RankConfig

    out = tmp_path_factory.mktemp("ranker") / "deepfm"
    # history_len equal to the SASRec fixture's max_len: same tables, same schema, one feature service
    cfg = RankConfig(model="deepfm", label="implicit", negatives=2, history_len=10, epochs=3, batch_size=128, seed=0)
    train_and_export_ranker(
        cfg,
        ring_data["train"],
        out,
        users=ring_data["users"],
        items=ring_data["items"],
        progress=False,
        log=lambda *_: None,
    )
    return out


@pytest.fixture(scope="session")
def ensemble_artifact(ring_data, tmp_path_factory) -> Path:
    """A small ensemble (SASRec over 8 items + GRU4Rec over 10) exported with an ANN index."""
    from trainer.families.next_item import TrainConfig
    from trainer.pipeline import train_and_export

    out = tmp_path_factory.mktemp("ensemble") / "ensemble"
    cfg = TrainConfig(
        model="ensemble",
        epochs=6,
        batch_size=32,
        max_len=10,
        hidden=16,
        heads=2,
        layers=1,
        inner=32,
        eval_every=2,
        patience=2,
        lr=5e-3,
        ann="on",
        members=({"model": "sasrec", "max_len": 8}, {"model": "gru4rec"}),
    )
    train_and_export(
        ring_data["train"],
        out,
        cfg,
        users=ring_data["users"],
        items=ring_data["items"],
        progress=False,
        log=lambda *_: None,
    )
    return out


def _write_genre_data(
    directory: Path,
    *,
    users: int = 60,
    seed: int = 0,
    known: int = 24,
    history: tuple[int, int] = (8, 14),
    first_timestamp: int = 1_000,
) -> Path:
    """Two tastes: half the users only watch genre A items, half only genre B. Items n0-n3
    (A, B, A, B) are held back to be added after training. Writes inter.csv, items_train.csv
    (the `known` items) and items_all.csv (with n0-n3)."""
    rng = np.random.default_rng(seed)
    items = [(f"i{j:02d}", f"Film {j}", "A" if j % 2 == 0 else "B") for j in range(known)]
    items += [(f"n{j}", f"New {j}", "A" if j % 2 == 0 else "B") for j in range(4)]
    rows, t = [], first_timestamp
    for u in range(users):
        genre = "A" if u % 2 == 0 else "B"
        pool = [i for i, _, g in items[:known] if g == genre]
        for item in rng.choice(pool, size=int(rng.integers(*history))):
            t += 1
            rows.append((f"u{u:02d}", item, t))
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(directory / "inter.csv", index=False)
    table = pd.DataFrame(items, columns=["item_id", "title", "genres"])
    # "A|X" makes genres multi-valued; X is shared by all, so only A/B tells items apart
    table["genres"] = table["genres"] + "|X"
    table.iloc[:known].to_csv(directory / "items_train.csv", index=False)
    table.to_csv(directory / "items_all.csv", index=False)
    return directory


@pytest.fixture(scope="session")
def genre_taste_data():
    """The genre-taste data writer (content / cold-start tests): call it with a directory."""
    return _write_genre_data


@contextlib.contextmanager
def _served_by_cli(artifact: Path, directory: Path):
    """`recsys serve features` and `recsys serve inference` for `artifact` on loopback, waited
    for; yields a dict with the inference `target` and the feature service's (`features`). On
    leaving, both get SIGTERM and the dict gains their `returncodes` and `logs` (inference first)."""
    from recsys.client import free_port, wait_serving

    recsys = [sys.executable, "-m", "recsys.cli"]
    fport, iport = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    pipes = {"env": env, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    features = subprocess.Popen(
        [*recsys, "serve", "features", "--artifact", str(artifact), "--store", f"sqlite://{directory}/f.sqlite",
         "--host", "127.0.0.1", "--port", str(fport)],
        **pipes,
    )  # fmt: skip
    inference = subprocess.Popen(
        [*recsys, "serve", "inference", "--artifact", str(artifact), "--features", f"127.0.0.1:{fport}",
         "--host", "127.0.0.1", "--port", str(iport)],
        **pipes,
    )  # fmt: skip
    state: dict = {"target": f"127.0.0.1:{iport}", "features": f"127.0.0.1:{fport}"}
    try:
        wait_serving(f"127.0.0.1:{fport}", features)
        wait_serving(state["target"], inference)
        yield state
    finally:
        for proc in (inference, features):
            proc.send_signal(signal.SIGTERM)
        state["logs"] = [proc.communicate(timeout=30)[0] for proc in (inference, features)]
        state["returncodes"] = [inference.returncode, features.returncode]


@pytest.fixture
def served_by_cli():
    """A context manager: `with served_by_cli(artifact, tmp_path) as servers: servers["target"]`."""
    return _served_by_cli


@pytest.fixture
def crash_after_epoch(monkeypatch):
    """`with crash_after_epoch(n): train(...)`: the training loop writes epoch n's checkpoint and
    then dies (a KeyboardInterrupt the block must raise); its own save is back afterwards."""
    from trainer import loop

    real_save = loop.save_checkpoint

    @contextlib.contextmanager
    def crash(epoch: int):
        def save_then_crash(directory, state):
            real_save(directory, state)
            if state["epoch"] == epoch:
                raise KeyboardInterrupt(f"killed after epoch {epoch}")

        monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(loop, "save_checkpoint", real_save)

    return crash
