import json

from trainer.compare import compare_models
from trainer.families.next_item import TrainConfig


def test_compare_trains_each_model_on_one_split_and_writes_table_and_plot(ring_data, tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=32, max_len=8, hidden=16, eval_every=2, patience=2)
    rows = compare_models(
        ring_data["interactions"],
        ["gru4rec", "caser"],
        tmp_path,
        cfg,
        items=ring_data["items"],
        progress=False,
        log=lambda *_: None,
    )
    assert [r["model"] for r in rows] == ["gru4rec", "caser"]
    assert all(r["cases"] == 80 for r in rows)  # one held-out event per user, split automatically
    assert json.loads((tmp_path / "compare.json").read_text())[0]["model"] == "gru4rec"
    assert (tmp_path / "compare.png").stat().st_size > 0
    assert (tmp_path / "caser" / "manifest.json").exists()


def test_compare_gives_the_mean_and_spread_over_seeds(ring_data, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=32, max_len=8, hidden=16, eval_every=1, patience=1)
    rows = compare_models(
        ring_data["interactions"],
        ["gru4rec", "ease"],
        tmp_path,
        cfg,
        progress=False,
        log=lambda *_: None,
        seeds=(0, 1),
    )
    gru, ease = rows
    assert gru["seeds"] == [0, 1] and (tmp_path / "gru4rec" / "seed-1" / "manifest.json").exists()
    assert gru["ndcg@10_std"] >= 0.0 and 0.0 <= gru["ndcg@10"] <= 1.0
    assert ease["ndcg@10_std"] == 0.0  # closed form: the seed changes nothing
    assert ease["ndcg@10"] > 0.3  # the ring is learnt
