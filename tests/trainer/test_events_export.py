"""Artifacts of models that read event kinds: the second input, parity, offline evaluation."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from recsys.artifact import SOURCE_USER_HISTORY, SOURCE_USER_HISTORY_EVENTS, ItemIndex, read_manifest
from recsys.schema import FIRST_TOKEN, OOV, PAD, FeatureSchema
from trainer.data.encoding import (
    build_item_index,
    encode_events,
    encode_histories,
    event_vocabulary,
    history_rows,
)
from trainer.data.split import leave_last_out
from trainer.data.tables import load_tables
from trainer.evaluation.ranking import rank_held_out
from trainer.evaluation.scorers import SequenceScorer
from trainer.evaluation.tables import ArtifactTables
from trainer.export.next_item import ExportError, ExportInputs, export_artifact
from trainer.families.next_item import TrainConfig, fit
from trainer.models import MODELS

KINDS = ("cart", "purchase", "view")


def model(name="sasrec", num_items=25, max_len=10, num_events=3):
    torch.manual_seed(0)
    cfg = TrainConfig(model=name, max_len=max_len, hidden=16).model_config(num_items, num_events)
    return MODELS[name][1](cfg).eval()


def export_inputs(num_items=25, max_len=10, events=KINDS):
    ids = tuple(f"i{i}" for i in range(num_items))
    index = ItemIndex(ids, ("",) * num_items, tuple(range(num_items, 0, -1)))
    return ExportInputs(
        model_kind="sasrec",
        max_len=max_len,
        item_index=index,
        schema=FeatureSchema(max_history=max_len, item_index_sha256=index.sha256),
        histories=[{"user_id": "u1", "item_ids": ["i1", "i2"], "timestamps": [1, 2], "events": ["view", "cart"]}],
        users=[],
        items=[],
        training={"config": {"seed": 0}},
        metrics={},
        events=events,
    )


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "caser"])
def test_export_takes_history_events_and_matches_torch(tmp_path, name):
    net = model(name)
    manifest = export_artifact(net, export_inputs(), tmp_path / "a")
    assert [(i.name, i.source, i.dtype, i.shape) for i in manifest.inputs] == [
        ("item_seq", SOURCE_USER_HISTORY, "int64", ("batch", "seq")),
        ("history_events", SOURCE_USER_HISTORY_EVENTS, "int64", ("batch", "seq")),
    ]
    assert read_manifest(tmp_path / "a").training["events"] == list(KINDS)
    assert manifest.metrics["export_parity_max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "a" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["item_seq", "history_events"]
    rng = np.random.default_rng(0)
    for batch, length, pads in [(1, 10, 0), (6, 10, 7), (3, 4, 1)]:  # unpadded, padded, short
        x = rng.integers(FIRST_TOKEN, 25 + FIRST_TOKEN, (batch, length))
        x[:, :pads] = PAD
        kinds = np.where(x != PAD, rng.integers(OOV, len(KINDS) + FIRST_TOKEN, x.shape), PAD)
        got = session.run(["scores"], {"item_seq": x, "history_events": kinds})[0]
        with torch.no_grad():
            expected = net(torch.from_numpy(x), torch.from_numpy(kinds)).numpy()
        assert np.abs(got - expected).max() <= 1e-4


def test_export_refuses_what_cannot_read_kinds(tmp_path):
    with pytest.raises(ExportError, match="ANN retrieval cannot read event kinds"):
        export_artifact(model(), export_inputs(), tmp_path / "a", ann="on")
    with pytest.raises(ExportError, match="int8"):
        export_artifact(model(), export_inputs(), tmp_path / "b", int8=True)
    with pytest.raises(ExportError, match="reads 3 event kinds; ExportInputs.events names 2"):
        export_artifact(model(), export_inputs(events=("a", "b")), tmp_path / "c")
    # a model that reads no kinds keeps the one input and records no vocabulary
    plain = export_artifact(model(num_events=0), export_inputs(), tmp_path / "d")
    assert [i.name for i in plain.inputs] == ["item_seq"] and "events" not in plain.training


def test_event_aware_artifact_evaluates_offline(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for u in range(30):
        for t in range(int(rng.integers(4, 12))):
            kind = ("view", "cart", "purchase")[int(rng.integers(0, 3))]
            rows.append((f"u{u}", f"i{int(rng.integers(0, 20))}", t, kind))
    rows.append(("u0", "i3", 99, "wishlist"))  # a kind only the test period has
    path = tmp_path / "events.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event"]).to_csv(path, index=False)
    train, test = leave_last_out(load_tables(path).interactions, ("purchase",))
    index = build_item_index(train, None)
    kinds = event_vocabulary(train)
    assert "wishlist" not in kinds
    _, sequences = encode_histories(train, index)
    cfg = TrainConfig(max_len=8, hidden=8, epochs=1, eval_every=1, loss="ce", target_events=("purchase",))
    result = fit(
        cfg, sequences, len(index.item_ids), progress=False, events=encode_events(train, kinds), event_kinds=kinds
    )
    export_artifact(
        result.model,
        ExportInputs(
            model_kind="sasrec",
            max_len=8,
            item_index=index,
            schema=FeatureSchema(max_history=8, item_index_sha256=index.sha256),
            histories=history_rows(train),
            users=[],
            items=[],
            training={"config": {}},
            metrics={},
            events=tuple(result.settings["events"]),
        ),
        tmp_path / "a",
    )
    tables = ArtifactTables.read(tmp_path / "a")
    user = test["user_id"].iloc[0]
    assert len(tables.events(user)) == len(tables.history(user)) > 0
    scorer = SequenceScorer(tmp_path / "a", tables)
    # the graph sees the same kinds the model saw: ONNX scores equal the torch model's
    users = list(test["user_id"])
    got = scorer.scores(users, np.ones((len(users), len(index.item_ids)), dtype=bool))
    windows = np.zeros((len(users), 8), dtype=np.int64)
    kind_windows = np.zeros_like(windows)
    for r, u in enumerate(users):
        h, e = tables.history(u)[-8:], tables.events(u)[-8:]
        windows[r, -len(h) :], kind_windows[r, -len(e) :] = h, e
    with torch.no_grad():
        expected = result.model.eval()(torch.from_numpy(windows), torch.from_numpy(kind_windows)).numpy()
    assert np.abs(got - expected).max() <= 1e-4
    metrics = rank_held_out(
        tables, scorer, test, k=10, protocol="full", negatives=100, sampling="uniform", seed=0, batch=16
    )
    assert 0 <= metrics["ndcg@10"] <= 1 and metrics["users"] == len(test)
    assert metrics["popularity_fallback_cases"] == 0  # every test user was scored by the graph
