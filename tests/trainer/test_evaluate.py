import pytest

from trainer.evaluate import evaluate_artifact


def test_full_ranking_reports_every_metric(trained_artifact, ring_data):
    m = evaluate_artifact(trained_artifact, ring_data["test"], k=10)
    assert m["users"] == m["cases"] == 80
    for key in ("hr@10", "ndcg@10", "mrr@10", "precision@10", "map@10", "auc", "coverage@10", "mean_popularity@10"):
        assert 0.0 <= m[key] <= (1.0 if key != "mean_popularity@10" else 100.0), key
    assert m["precision@10"] == pytest.approx(m["hr@10"] / 10)
    assert m["hr@10"] > 0.5  # the ring is learnable; random ranking of 40 items gives ~0.27


def test_sampled_protocol_is_easier_than_full_ranking(trained_artifact, ring_data):
    full = evaluate_artifact(trained_artifact, ring_data["test"], k=3)
    sampled = evaluate_artifact(trained_artifact, ring_data["test"], k=3, protocol="sampled", negatives=5)
    assert sampled["hr@3"] >= full["hr@3"]
    assert sampled["protocol"] == "sampled" and sampled["negatives"] == 5


def test_bad_protocol_is_refused(trained_artifact, ring_data):
    with pytest.raises(ValueError, match="protocol"):
        evaluate_artifact(trained_artifact, ring_data["test"], protocol="weird")
