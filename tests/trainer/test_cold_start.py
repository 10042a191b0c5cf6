"""Cold-start training and selection: rare words, the content-only loss, validation on held-out
items (ColdShelf) and the helpers of experiments/cold_start.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.artifact import ItemIndex
from recsys.schema import FIRST_TOKEN, PAD, FeatureKind, FeatureSpec
from trainer.export.add_items import add_items
from trainer.families.content import (
    CONTENT_CHECKPOINT,
    ColdShelf,
    ContentSpec,
    fit_content,
    load_content_model,
)
from trainer.families.next_item import TrainConfig, fit
from trainer.models.content import ContentSASRec, ContentSASRecConfig
from trainer.pipeline import train_and_export

SPECS = (
    FeatureSpec("title", FeatureKind.TEXT),
    FeatureSpec("genres", FeatureKind.MULTI_CATEGORICAL, vocabulary=("A", "B")),
)
ROWS = [
    {"item_id": "a", "features": {"title": "Star Wars", "genres": ["A"]}},
    {"item_id": "b", "features": {"title": "Star Trek", "genres": ["B"]}},
    {"item_id": "c", "features": {"title": "Calm", "genres": ["A", "B"]}},
]


def load_script(name: str = "cold_start"):
    folder = "scripts" if name == "text_vectors" else "experiments"  # a user tool vs an experiment
    path = Path(__file__).resolve().parents[2] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_words_of_a_single_item_are_dropped_and_the_choice_travels_with_the_spec():
    every = ContentSpec.fit(ROWS, SPECS)
    shared = ContentSpec.fit(ROWS, SPECS, min_word_items=2)
    assert every.word_buckets is None and len(every.word_ids(ROWS[0]["features"])) == 2
    star = every.word_ids({"title": "star"})
    assert shared.word_buckets == tuple(star)  # "star" is the only word two items have
    assert shared.word_ids(ROWS[0]["features"]) == star
    assert shared.word_ids(ROWS[2]["features"]) == []  # "calm": one item only
    assert ContentSpec.from_dict(shared.to_dict()) == shared
    old = every.to_dict()
    del old["word_buckets"]  # specs saved before the field existed keep every word
    assert ContentSpec.from_dict(old) == every


def small_model(content_loss: float) -> ContentSASRec:
    spec = ContentSpec.fit(ROWS, SPECS)
    cfg = ContentSASRecConfig(
        num_items=3, max_len=4, hidden=8, heads=2, layers=1, inner=16, content_loss=content_loss, **spec.model_fields()
    )
    model = ContentSASRec(cfg)
    model.item_emb.set_content(*spec.encode(("a", "b", "c"), {r["item_id"]: r["features"] for r in ROWS}).tensors())
    return model


def test_the_content_loss_ranks_items_by_content_alone():
    x = torch.tensor([[PAD, 2, 3, 3], [2, 3, 3, 2]])  # item "c" (token 4) is never an input
    y = torch.tensor([[PAD, 3, 4, 2], [4, 3, 2, 4]])
    assert small_model(0.0).auxiliary_loss(x, y).item() == 0.0
    model = small_model(2.0).eval()  # no dropout: the same loss twice
    loss = model.auxiliary_loss(x, y)
    assert loss.item() > 0
    with torch.no_grad():
        model.item_emb.id_emb.weight[4] += 5.0  # the id of a scored item plays no part
    assert model.auxiliary_loss(x, y).item() == pytest.approx(loss.item())
    model.train()
    model.auxiliary_loss(x, y).backward()
    assert model.item_emb.word_emb.weight.grad.abs().sum() > 0  # the content path learns from it
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # and so does the sequence encoder


@pytest.mark.slow
def test_fit_selects_the_epoch_with_the_best_validator_metric():
    model = small_model(0.5)
    sequences = [np.array([2, 3, 4, 2, 3]), np.array([4, 3, 2, 4])]
    marks = iter([0.1, 0.7, 0.3, 0.2])
    states = []

    def validator(m):
        assert not m.training  # validated in eval mode
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"cold_hr@10": next(marks)}

    cfg = TrainConfig(model="content_sasrec", epochs=4, eval_every=1, patience=10, max_len=4, batch_size=2, seed=0)
    result = fit(cfg, sequences, 3, progress=False, model=model, validator=validator, select="cold_hr@10")
    assert result.best_epoch == 2 and result.best_metrics["cold_hr@10"] == 0.7
    assert [row["cold_hr@10"] for row in result.history] == [0.1, 0.7, 0.3, 0.2]
    for name, value in result.model.state_dict().items():
        torch.testing.assert_close(value, states[1][name])


@pytest.mark.slow
def test_the_cold_shelf_ranks_new_items_as_the_re_exported_model_serves_them(tmp_path, genre_taste_data):
    import onnxruntime as ort

    d = genre_taste_data(tmp_path, users=40, known=16, history=(6, 10), first_timestamp=0)
    cfg = TrainConfig(
        model="content_sasrec",
        epochs=3,
        eval_every=3,
        max_len=6,
        hidden=16,
        inner=32,
        layers=1,
        batch_size=32,
        lr=1e-2,
        content_loss=1.0,
        min_word_items=1,
        seed=0,
    )  # every word: no look-alikes
    train_and_export(
        d / "inter.csv", d / "trained", cfg, items=d / "items_train.csv", progress=False, log=lambda *_: None
    )
    add_items(d / "trained", d / "items_all.csv", d / "served")
    model, spec, trained_ids = load_content_model(d / "trained.ckpt" / CONTENT_CHECKPOINT)
    _, rows, _ = fit_content(pd.read_csv(d / "items_all.csv"))
    shelf = ["n0", "n1", "n2", "n3"]
    col = {item: j for j, item in enumerate(trained_ids)}
    rng = np.random.default_rng(1)
    histories = [[col[i] for i in rng.choice(trained_ids, size=int(rng.integers(1, 7)))] for _ in range(30)]
    windows = np.full((30, 6), PAD, dtype=np.int64)
    for r, h in enumerate(histories):
        windows[r, -len(h) :] = np.array(h) + FIRST_TOKEN
    targets = rng.integers(0, 4, size=30)
    got = ColdShelf(spec, rows, shelf, windows, targets, k=2)(model)

    served = ItemIndex.read(d / "served")
    cols = [served.item_ids.index(i) for i in shelf]
    session = ort.InferenceSession(str(d / "served" / "model.onnx"), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"item_seq": windows})[0][:, cols]  # (30, 4)
    ranks = (scores > scores[np.arange(30), targets][:, None]).sum(1)
    # no near-ties: ONNX and torch may split an exact tie differently (the tie rule is tested apart)
    assert all(len(set(row)) == 4 for row in scores.round(5).tolist())
    assert got["cold_hr@2"] == pytest.approx(float((ranks < 2).mean()))
    assert got["cold_ndcg@2"] == pytest.approx(float(np.where(ranks < 2, 1 / np.log2(ranks + 2), 0).mean()), abs=1e-6)
    with pytest.raises(ValueError, match="no features"):
        ColdShelf(spec, rows, ["nothing"], windows, targets)


def test_the_cold_shelf_counts_ties_as_half_a_place():
    model = small_model(0.0).eval()
    spec = ContentSpec.fit(ROWS, SPECS)
    rows = {"x": {"genres": ["A"]}, "y": {"genres": ["A"]}, "z": {"genres": ["A"]}}  # identical content
    windows = np.array([[PAD, PAD, 2, 3]] * 2)
    got = ColdShelf(spec, rows, ["x", "y", "z"], windows, np.array([0, 2]), k=1)(model)
    assert got["cold_hr@1"] == 0.0  # expected rank 1 of 0..2: no luck of the order
    assert ColdShelf(spec, rows, ["x", "y", "z"], windows, np.array([0, 2]), k=2)(model)["cold_hr@2"] == 1.0


def test_cases_are_first_interactions_with_earlier_events_of_known_items():
    script = load_script()
    inter = pd.DataFrame(
        {"user_id": ["u", "u", "u", "u", "v", "v", "w"], "item_id": ["a", "t", "n", "m", "n", "a", "b"]}
    )
    col = {"a": 0, "b": 1, "m": 2, "n": 3, "t": 4}
    histories, targets, skipped = script.first_cases(inter, {"n", "m"}, col, drop={"t"})
    assert histories == [[0]] and targets == ["n"] and skipped == 1  # v starts with a new item; w never meets one
    windows = script.windows_of([[0, 4], [1]], 3)
    assert windows.tolist() == [[PAD, 0 + FIRST_TOKEN, 4 + FIRST_TOKEN], [PAD, PAD, 1 + FIRST_TOKEN]]


def test_the_summary_reports_the_ratio_of_the_means():
    script = load_script()

    def report(seed, model, base):
        return {
            "seed": seed,
            "best_epoch": 1,
            "ratio_hr_vs_genre_popularity": model / base,
            "results": {
                "content_sasrec": {"among_held_out": {"hr@10": model}},
                "genre_popularity": {"among_held_out": {"hr@10": base}},
            },
        }

    summary = script.summarise([report(0, 0.4, 0.1), report(1, 0.2, 0.1), report(2, 0.3, 0.2)], 10)
    assert summary["mean"]["content_sasrec"]["among_held_out"]["hr@10"] == pytest.approx(0.3)
    assert summary["ratio_of_means_hr_vs_genre_popularity"] == pytest.approx(0.3 / (0.4 / 3), abs=1e-3)
    assert summary["per_seed_ratio"] == pytest.approx([4.0, 2.0, 1.5])


def test_the_content_bias_is_scored_folded_into_the_export_and_given_to_new_items():
    spec = ContentSpec.fit(ROWS, SPECS)
    cfg = ContentSASRecConfig(
        num_items=3, max_len=4, hidden=8, heads=2, layers=1, inner=16, content_bias=True, **spec.model_fields()
    )
    model = ContentSASRec(cfg).eval()
    rows = {r["item_id"]: r["features"] for r in ROWS}
    model.item_emb.set_content(*spec.encode(("a", "b", "c"), rows).tensors())
    with torch.no_grad():
        model.item_emb.bias_head.bias += 3.0
        x = torch.tensor([[PAD, 2, 3, 4], [2, 4, 3, 2]])
        bias = model.output_bias()
        assert bias.shape == (3,)
        hidden = model.encode(x)[:, -1]
        torch.testing.assert_close(model(x), hidden @ model.item_embeddings().T + bias)
        torch.testing.assert_close(model.export_view()(x), model(x))
        # an item with no id embedding, scored from its content, gets exactly its bias too
        content = model.item_emb.content_of(*(t[FIRST_TOKEN:] for t in spec.encode(("a",), rows).tensors()[:3]))
        no_id = model.item_emb.content()[FIRST_TOKEN]
        torch.testing.assert_close(model.score_content(hidden, content)[:, 0], hidden @ no_id + bias[0])


def test_text_vectors_are_written_as_an_item_vector_file_content_models_read(tmp_path):
    from trainer.families.content import read_item_vectors

    script = load_script("text_vectors")
    items = pd.DataFrame(
        {
            "item_id": ["7", "8", "9"],
            "title": ["Heat (1995)", "Fargo (1996)", None],
            "description": ["a heist", None, "no title"],
        }
    )
    seen = []

    def encode(texts):  # a stand-in encoder: text length and word count, unnormalised
        seen.extend(texts)
        return [[len(t), len(t.split()) + 1.0] for t in texts]

    table = script.text_vectors(items, ["title", "description"], encode)
    assert seen == ["Heat (1995). a heist", "Fargo (1996)", "no title"]
    table.to_csv(tmp_path / "v.csv", index=False)
    vectors = read_item_vectors(tmp_path / "v.csv")
    assert sorted(vectors) == ["7", "8", "9"]
    expected = np.array([12.0, 3.0]) / np.linalg.norm([12.0, 3.0])
    np.testing.assert_allclose(vectors["8"], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="no column"):
        script.text_vectors(items, ["plot"], encode)
    with pytest.raises(ValueError, match="returned shape"):
        script.text_vectors(items, ["title"], lambda texts: [[1.0, 2.0]])
