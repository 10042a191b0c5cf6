import json

from recsys.artifact import read_jsonl
from trainer.families.next_item import TrainConfig
from trainer.pipeline import train_and_export


def test_forgotten_users_are_left_out_of_training_and_export(ring_data, tmp_path):
    forgotten = tmp_path / "forgotten.jsonl"
    forgotten.write_text(
        json.dumps({"user_id": "u001", "forgotten_at": 1}) + "\n" + json.dumps({"user_id": "u002"}) + "\n"
    )
    out = tmp_path / "a"
    train_and_export(
        ring_data["train"],
        out,
        TrainConfig(epochs=1, max_len=8, hidden=16),
        users=ring_data["users"],
        progress=False,
        forget_users=forgotten,
        log=lambda *_: None,
    )
    histories = {row["user_id"] for row in read_jsonl(out / "histories.jsonl")}
    users = {row["user_id"] for row in read_jsonl(out / "users.jsonl")}
    assert "u001" not in histories and "u002" not in histories and "u003" in histories
    assert "u001" not in users and "u002" not in users
    assert len(histories) == 78
