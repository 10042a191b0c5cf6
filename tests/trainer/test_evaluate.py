import dataclasses

import numpy as np
import pandas as pd
import pytest

from recsys.artifact import ModelInput, read_manifest
from trainer.evaluate import evaluate_artifact, model_family, read_pairs
from trainer.evaluation.ranking import sampled_only
from trainer.evaluation.tables import read_rows


def test_full_ranking_reports_every_metric(trained_artifact, ring_data):
    m = evaluate_artifact(trained_artifact, ring_data["test"], k=10)
    assert m["users"] == m["cases"] == 80
    assert (m["model_kind"], m["task"], m["protocol"]) == ("sasrec", "next_item", "full")
    for key in ("hr@10", "ndcg@10", "mrr@10", "precision@10", "map@10", "auc", "coverage@10", "mean_popularity@10"):
        assert 0.0 <= m[key] <= (1.0 if key != "mean_popularity@10" else 100.0), key
    assert m["precision@10"] == pytest.approx(m["hr@10"] / 10)
    assert m["hr@10"] > 0.5  # the ring is learnable; random ranking of 40 items gives ~0.27
    # the popularity baseline on the same rows, beside the model's figures: the ring beats it
    assert 0.0 <= m["popularity_ndcg@10"] < m["ndcg@10"] and 0.0 <= m["popularity_hr@10"] < m["hr@10"]


def test_sampled_protocol_is_easier_than_full_ranking(trained_artifact, ring_data):
    full = evaluate_artifact(trained_artifact, ring_data["test"], k=3)
    sampled = evaluate_artifact(trained_artifact, ring_data["test"], k=3, protocol="sampled", negatives=5)
    assert sampled["hr@3"] >= full["hr@3"]
    assert sampled["protocol"] == "sampled" and sampled["negatives"] == 5


def test_bad_protocol_is_refused(trained_artifact, ring_data):
    with pytest.raises(ValueError, match="protocol"):
        evaluate_artifact(trained_artifact, ring_data["test"], protocol="weird")


def test_unknown_users_and_items_are_counted_not_fatal(trained_artifact, ring_data, tmp_path):
    test = pd.read_csv(ring_data["test"], dtype=str)
    odd = pd.DataFrame({"user_id": ["nobody", "u001"], "item_id": ["m01", "no-such-item"]})
    pd.concat([test, odd]).to_csv(tmp_path / "odd.csv", index=False)
    m = evaluate_artifact(trained_artifact, tmp_path / "odd.csv", k=10)
    assert m["cases"] == len(test) + 2 and m["unknown_user_cases"] == m["unknown_item_cases"] == 1
    assert m["popularity_fallback_cases"] >= 1


def test_read_rows_keeps_labels_and_ratings_and_recbole_headers(tmp_path):
    path = tmp_path / "t.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\tnote:token\n1\t7\t4.5\tx\n2\t8\t\ty\n\t9\t3\tz\n")
    rows = read_rows(path)
    assert list(rows.columns) == ["user_id", "item_id", "rating"] and rows["user_id"].tolist() == ["1", "2"]
    assert rows["rating"].iloc[0] == 4.5 and np.isnan(rows["rating"].iloc[1])
    assert list(read_pairs(path).columns) == ["user_id", "item_id"]
    with pytest.raises(ValueError, match="item_id"):
        (tmp_path / "bad.csv").write_text("user_id,item\n1,2\n")
        read_rows(tmp_path / "bad.csv")


def test_model_family_follows_the_task_and_the_input_sources(trained_artifact):
    manifest = read_manifest(trained_artifact)
    history = ModelInput("history", "user.history")
    feature = ModelInput("user_cat", "user.cat", "int64", ("batch", "2"))
    candidate = ModelInput("item_id", "item.id", "int64", ("batch",))

    def family(**changes) -> str:
        return model_family(dataclasses.replace(manifest, **changes))

    assert family() == "next_item"
    assert family(inputs=(feature, history), model_kind="two_tower") == "user_features"
    assert family(task="rank", inputs=(feature, candidate), model_kind="deepfm") == "rank"
    assert family(task="rating", inputs=(candidate,)) == family(model_kind="rating", inputs=(candidate,)) == "rating"
    with pytest.raises(ValueError, match="cannot evaluate"):
        family(inputs=(candidate, history))
    with pytest.raises(ValueError, match="cannot evaluate"):
        family(task="clustering")


def test_sampled_only_keeps_the_target_and_n_unseen_items():
    excluded = np.array([[True, False, False, False, False, False], [False, True, False, False, False, False]])
    keep = sampled_only(excluded, np.array([2, 1]), 3, np.ones(6), np.random.default_rng(0))
    ranked = ~keep
    assert ranked[0, 2] and not ranked[0, 0] and ranked[0].sum() == 4  # target + 3 unseen items
    assert not ranked[1, 1] and ranked[1].sum() == 3  # a seen target stays excluded: a miss
    few = sampled_only(excluded[:1], np.array([2]), 10, np.ones(6), np.random.default_rng(0))
    assert (~few[0]).tolist() == [False, True, True, True, True, True]  # all 4 other unseen items, no more
