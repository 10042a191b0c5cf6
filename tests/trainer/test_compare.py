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
