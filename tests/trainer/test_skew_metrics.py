"""Long-tail exposure metrics on hand-computed arrays, and `recsys evaluate` reporting them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from trainer.metrics import gini, long_tail_metrics, tail_items


def test_gini_by_hand():
    assert gini(np.array([5, 5, 5, 5])) == 0.0  # equal exposure
    assert gini(np.array([0, 0, 0, 1])) == pytest.approx(0.75)  # all on one of four: (n - 1) / n
    # sorted x = 1, 2, 3: sum (2i - n - 1) x_i = -2*1 + 0*2 + 2*3 = 4; / (n * sum) = 4 / 18
    assert gini(np.array([3, 1, 2])) == pytest.approx(4 / 18)
    assert gini(np.array([])) == 0.0 and gini(np.zeros(3)) == 0.0


def test_tail_is_everything_outside_the_most_popular_fifth():
    popularity = np.array([50, 40, 30, 20, 10, 9, 8, 7, 6, 5])  # head = ceil(0.2 * 10) = 2 items
    assert tail_items(popularity).tolist() == [False, False] + [True] * 8
    assert tail_items(np.array([1, 9, 9])).tolist() == [True, False, True]  # ceil(0.6) = 1; ties by column
    assert tail_items(popularity, head_share=0.5).sum() == 5


def test_long_tail_metrics_by_hand():
    popularity = np.array([50, 40, 30, 20, 10, 9, 8, 7, 6, 5])  # items 0, 1 head; 2..9 tail
    top = np.array([[0, 1, 2], [0, 3, 1]])  # k = 3; counts: 0:2, 1:2, 2:1, 3:1, rest 0
    ranks = np.array([2.0, np.inf, 0.0, 5.0])
    targets = np.array([2, 4, 0, -1])  # tail, tail, head, outside the catalogue
    out = long_tail_metrics(top, popularity, ranks, targets, k=3)
    counts = np.array([2, 2, 1, 1, 0, 0, 0, 0, 0, 0])
    assert out["gini@3"] == pytest.approx(gini(counts))
    assert out["tail_share@3"] == pytest.approx(2 / 6)
    assert out["tail_recall@3"] == pytest.approx(0.5)  # target 2 at rank 2 hit, target 4 missed
    assert out["tail_cases"] == 2


def test_evaluate_reports_long_tail_exposure(trained_artifact, ring_data):
    from recsys.artifact import ItemIndex
    from recsys.cli import main
    from trainer.evaluate import evaluate_artifact

    result = evaluate_artifact(trained_artifact, ring_data["test"], k=5)
    index = ItemIndex.read(trained_artifact)
    tail = set(np.array(index.item_ids)[tail_items(np.array(index.popularity))])
    test = pd.read_csv(ring_data["test"], dtype=str)
    assert result["tail_cases"] == int(test["item_id"].isin(tail).sum())
    assert 0.0 <= result["gini@5"] < 1.0 and 0.0 <= result["tail_share@5"] <= 1.0
    assert 0.0 <= result["tail_recall@5"] <= 1.0 and 0.0 < result["coverage@5"] <= 1.0
    out = CliRunner().invoke(
        main, ["evaluate", "--artifact", str(trained_artifact), "--test", str(ring_data["test"]), "--k", "5", "--json"]
    )
    assert out.exit_code == 0, out.output
    printed = json.loads(out.output.splitlines()[-1])
    assert printed["gini@5"] == pytest.approx(result["gini@5"]) and "tail_recall@5" in out.output
