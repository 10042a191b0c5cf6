"""Explanations: leave-one-out over the history (next-item models), ablation per feature field
(feature-based rankers), served through Recommend(explain=true), and their faithfulness."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from feature_service.server import create_feature_server
from inference_server.explain import (
    explain_next_item,
    leave_one_out_windows,
    window_scorer,
)
from inference_server.server import create_inference_server
from recsys.artifact import HISTORIES, ItemIndex, read_jsonl, read_manifest
from recsys.onnx_session import ModelSession
from recsys.schema import FIRST_TOKEN, PAD
from recsys.v1 import inference_pb2, inference_pb2_grpc


def test_leave_one_out_windows_remove_every_occurrence_and_slide_older_items_in():
    tokens = np.array([5, 2, 3, 2, 1, 4], dtype=np.int64)  # 1 = OOV: read by the model, never attributed
    removed, rows = leave_one_out_windows(tokens, 4)
    assert removed.tolist() == [4, 2, 3]  # distinct known items of the window [3, 2, 1, 4], most recent first
    assert rows.tolist() == [
        [3, 2, 1, 4],  # unchanged
        [2, 3, 2, 1],  # without 4
        [5, 3, 1, 4],  # without both 2s: 5 slides in
        [2, 2, 1, 4],  # without 3
    ]
    # a history the window does not fill
    removed, rows = leave_one_out_windows(np.array([7], dtype=np.int64), 3)
    assert removed.tolist() == [7] and rows.tolist() == [[0, 0, 7], [0, 0, 0]]
    removed, rows = leave_one_out_windows(np.array([1, 1], dtype=np.int64), 3)  # only OOV
    assert removed.size == 0 and rows.shape == (1, 3)


def test_window_scorer_repeats_the_user_row_beside_each_window_for_two_tower_models():
    from types import SimpleNamespace

    class Inputs:  # a two-tower user tower reading the history (length 3) and one categorical feature
        def __init__(self):
            self.names = {"user.history": "hist", "user.cat": "ucat"}
            self.encoder = SimpleNamespace(history_len=3)

        def feeds(self, features, history, items):
            return {"hist": np.zeros((1, 3), dtype=np.int64), "ucat": np.array([[features["c"]]], dtype=np.int64)}

    class Session:
        def run(self, feeds):  # score of column n: occurrences of item n in the window, + 0.1 * the feature
            hist, ucat = feeds["hist"], feeds["ucat"]
            assert hist.shape[0] == ucat.shape[0]
            return np.stack([(hist == n + FIRST_TOKEN).sum(axis=1) + 0.1 * ucat[:, 0] for n in range(4)], axis=1)

    score, length = window_scorer(Session(), Inputs(), {"c": 5}, max_len=50)
    assert length == 3
    ids, titles = ("a", "b", "c", "d"), ("A", "B", "C", "D")
    why = explain_next_item(score, np.array([2, 3, 3, 4]), length, np.array([1, 2]), ids, titles)
    # column 1 (token 3) is read twice in the window [3, 3, 4]; removing it drops its score by 2
    assert [(a.name, a.contribution, a.title) for a in why.because_items[0]] == [("b", pytest.approx(2.0), "B")]
    assert [(a.name, a.contribution) for a in why.because_items[1]] == [("c", pytest.approx(1.0))]
    assert why.because_features == [[], []]


def _serve(artifact, **kwargs):
    fserver, fport, _, fcore = create_feature_server(artifact, "memory://")
    iserver, iport, _, rec = create_inference_server(artifact, f"localhost:{fport}", max_k=50, **kwargs)
    channel = grpc.insecure_channel(f"localhost:{iport}")
    return (
        inference_pb2_grpc.InferenceServiceStub(channel),
        (channel, iserver, fserver, rec, fcore),
        f"localhost:{iport}",
    )


def _close(handles):
    channel, iserver, fserver, rec, fcore = handles
    channel.close()
    iserver.stop(None)
    fserver.stop(None)
    rec.features.close()
    fcore.close()


@pytest.fixture
def sasrec_stub(trained_artifact):
    stub, handles, target = _serve(trained_artifact)
    stub.target = target
    yield stub
    _close(handles)


def _window(item_ids: list[str], token: dict[str, int], length: int) -> np.ndarray:
    """The model's input built independently of explain.py: ids -> tokens -> last `length`, left-padded."""
    tokens = [token[i] for i in item_ids][-length:]
    return np.array([[PAD] * (length - len(tokens)) + tokens], dtype=np.int64)


def test_explanations_are_faithful_over_users(trained_artifact, sasrec_stub):
    """Removing the top explaining item lowers the item's score more than removing a random
    history item, on average over users (scores recomputed here, one history at a time)."""
    manifest = read_manifest(trained_artifact)
    index = ItemIndex.read(trained_artifact)
    session = ModelSession(trained_artifact, manifest)
    token = {item: i + FIRST_TOKEN for i, item in enumerate(index.item_ids)}
    length = manifest.max_history
    rng = np.random.default_rng(0)
    top_drops, random_drops = [], []
    for row in list(read_jsonl(trained_artifact / HISTORIES))[:40]:
        history = row["item_ids"]
        reply = sasrec_stub.Recommend(
            inference_pb2.RecommendRequest(user_id=row["user_id"], k=3, exclude_seen=True, explain=True), timeout=10
        )
        assert reply.source == inference_pb2.SOURCE_MODEL
        item = reply.items[0]
        col = token[item.item_id] - FIRST_TOKEN
        base = session.scores(_window(history, token, length))[0, col]
        assert base == pytest.approx(item.score, abs=1e-4)
        assert item.because_items, "a model answer over a known history explains its top item"
        contributions = [a.contribution for a in item.because_items]
        assert contributions == sorted(contributions, reverse=True) and min(contributions) > 0
        read = set(history[-length:])
        assert all(a.name in read for a in item.because_items)  # only items the model read
        assert all(a.title == index.titles[token[a.name] - FIRST_TOKEN] for a in item.because_items)
        top = item.because_items[0].name
        without_top = session.scores(_window([i for i in history if i != top], token, length))[0, col]
        assert base - without_top == pytest.approx(item.because_items[0].contribution, abs=1e-4)
        other = str(rng.choice(sorted(read)))
        without_other = session.scores(_window([i for i in history if i != other], token, length))[0, col]
        top_drops.append(base - without_top)
        random_drops.append(base - without_other)
    top_drops, random_drops = np.array(top_drops), np.array(random_drops)
    assert top_drops.mean() > random_drops.mean() + 0.1 * abs(top_drops.mean())
    assert (top_drops >= random_drops - 1e-5).all()  # the top item is the largest drop by construction


def test_no_explanations_unless_asked_or_for_popularity_answers(sasrec_stub):
    plain = sasrec_stub.Recommend(inference_pb2.RecommendRequest(user_id="u001", k=5, exclude_seen=True), timeout=5)
    assert all(not i.because_items and not i.because_features for i in plain.items)
    explained = sasrec_stub.Recommend(
        inference_pb2.RecommendRequest(user_id="u001", k=5, exclude_seen=True, explain=True), timeout=5
    )
    assert [i.item_id for i in explained.items] == [i.item_id for i in plain.items]
    assert [i.score for i in explained.items] == [i.score for i in plain.items]
    assert all(not i.because_features for i in explained.items)  # a next-item model has no feature fields
    unknown = sasrec_stub.Recommend(
        inference_pb2.RecommendRequest(user_id="nobody", k=5, exclude_seen=True, explain=True), timeout=5
    )
    assert unknown.source == inference_pb2.SOURCE_POPULARITY
    assert all(not i.because_items for i in unknown.items)


def test_cli_explain_prints_because_you_watched_with_titles(sasrec_stub):
    from click.testing import CliRunner

    from recsys.cli import main

    out = CliRunner().invoke(main, ["explain", "--server", sasrec_stub.target, "--user", "u002", "--k", "3"])
    assert out.exit_code == 0, out.output
    assert out.output.count("because you watched Movie ") == 3, out.output
    unknown = CliRunner().invoke(main, ["explain", "--server", sasrec_stub.target, "--user", "nobody", "--k", "2"])
    assert unknown.exit_code == 0 and "popular with everyone" in unknown.output


@pytest.fixture(scope="module")
def ranker_artifact(ring_data, tmp_path_factory):
    from trainer.export.ranker import train_and_export_ranker
    from trainer.families.ranker import RankConfig

    out = tmp_path_factory.mktemp("explain-ranker") / "deepfm"
    cfg = RankConfig(model="deepfm", label="implicit", negatives=2, history_len=10, epochs=2, batch_size=128, seed=0)
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


def test_feature_ranker_explains_with_signed_feature_contributions(ranker_artifact):
    stub, handles, _ = _serve(ranker_artifact)
    try:
        reply = stub.Recommend(
            inference_pb2.RecommendRequest(user_id="u005", k=4, exclude_seen=True, explain=True), timeout=10
        )
        rec = handles[3]
        described = read_manifest(ranker_artifact).training["inputs"]
        known = {f"user.{n}" for n in described["user_cat"] + described["user_num"]}
        known |= {f"item.{n}" for n in described["item_cat"] + described["item_num"] + described["item_multi"]}
        known |= {"item.id", "user.history"}
        user = rec.features.get_user("u005", rec.seen_window)
        tokens = rec._tokens(user)
        for item in reply.items:
            assert item.because_features
            names = [a.name for a in item.because_features]
            assert set(names) <= known and len(set(names)) == len(names)
            sizes = [abs(a.contribution) for a in item.because_features]
            assert sizes == sorted(sizes, reverse=True)
            # recompute one ablation independently: the whole history set to PAD
            history = next((a for a in item.because_features if a.name == "user.history"), None)
            if history is not None:
                item_token = np.array([rec.token[item.item_id]], dtype=np.int64)
                feeds = rec.inputs.feeds(user.features, tokens, item_token, "u005")
                base = rec.session.run(feeds)[0]
                feeds[rec.inputs.names["user.history"]][:] = PAD
                assert base - rec.session.run(feeds)[0] == pytest.approx(history.contribution, abs=1e-4)
        assert any(a.contribution < 0 for i in reply.items for a in i.because_features) or any(
            a.contribution > 0 for i in reply.items for a in i.because_features
        )
        assert any(i.because_items for i in reply.items)  # the ranker reads the history: leave-one-out too
    finally:
        _close(handles)
