"""Event kinds and weights in the next-item trainer: data, windows, models, objective, export."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from recsys.schema import FIRST_TOKEN, OOV, PAD
from trainer.data.batches import fill_windows, training_windows, window_plan
from trainer.data.encoding import (
    build_item_index,
    encode_events,
    encode_histories,
    encode_weights,
    event_tokens,
    event_vocabulary,
    history_rows,
)
from trainer.data.split import leave_last_out
from trainer.data.tables import MAX_EVENT_LENGTH, load_tables
from trainer.families.losses import NegativeSampler, next_item_loss
from trainer.families.next_item import NextItemFamily, TrainConfig, fit
from trainer.models import MODELS

KINDS = ("cart", "purchase", "view")


def write(path, text):
    path.write_text(text)
    return path


# --- data --------------------------------------------------------------------------------


def test_event_and_weight_columns_survive_cleaning_from_csv_and_parquet(tmp_path):
    csv = write(
        tmp_path / "i.csv",
        "user_id,item_id,timestamp,event,weight\n"
        "u1,a,2,purchase,2.5\n"
        "u1,a,1,view,1\n"
        "u1,a,2,purchase,2.5\n"  # an exact duplicate, kind and weight included
        "u1,a,2,view,2.5\n"  # same time and item, another kind: kept
        "u2,b,3,view,0\n",
    )
    tables = load_tables(csv)
    df = tables.interactions
    assert list(df.columns) == ["user_id", "item_id", "timestamp", "event", "weight"]
    assert df["event"].tolist() == ["view", "purchase", "view", "view"]  # time order, ties in file order
    assert df["weight"].tolist() == [1.0, 2.5, 2.5, 0.0]
    assert tables.report.dropped == {"exact duplicate": 1}
    parquet = tmp_path / "i.parquet"
    pd.read_csv(csv, dtype={"weight": float}).to_parquet(parquet)
    again = load_tables(parquet).interactions
    assert again["event"].tolist() == df["event"].tolist() and again["weight"].tolist() == df["weight"].tolist()


def test_without_an_event_column_nothing_changes(tmp_path):
    tables = load_tables(write(tmp_path / "i.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\n"))
    assert list(tables.interactions.columns) == ["user_id", "item_id", "timestamp"]
    assert event_vocabulary(tables.interactions) == ()
    assert encode_events(tables.interactions, ()) is None and encode_weights(tables.interactions) is None
    assert "events" not in next(history_rows(tables.interactions))


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("event", "", "without a kind"),
        ("event", "   ", "blank"),
        ("event", "x" * (MAX_EVENT_LENGTH + 1), "more than 64"),
        ("weight", "-1", "not finite numbers >= 0"),
        ("weight", "inf", "not finite numbers >= 0"),
        ("weight", "", "not finite numbers >= 0"),
        ("weight", "heavy", "not finite numbers >= 0"),
    ],
)
def test_bad_kinds_and_weights_are_clear_errors(tmp_path, column, value, message):
    good = {"event": "view", "weight": "1"}
    row = {**good, column: value}
    text = f"user_id,item_id,timestamp,event,weight\nu,a,1,view,1\nu,b,2,{row['event']},{row['weight']}\n"
    with pytest.raises(ValueError, match=message) as info:
        load_tables(write(tmp_path / "i.csv", text))
    assert "row 2" in str(info.value)


def test_vocabulary_from_training_and_unseen_kinds_are_oov():
    train = pd.DataFrame(
        {
            "user_id": ["u", "u", "v"],
            "item_id": ["a", "b", "a"],
            "timestamp": [1, 2, 3],
            "event": ["view", "cart", "view"],
        }
    )
    vocabulary = event_vocabulary(train)
    assert vocabulary == ("cart", "view")  # sorted: kind i is token i + FIRST_TOKEN
    tokens = event_tokens(np.array(["view", "cart", "wishlist", "", None], dtype=object), vocabulary)
    assert tokens.tolist() == [FIRST_TOKEN + 1, FIRST_TOKEN, OOV, OOV, OOV]
    users, sequences = encode_histories(train, build_item_index(train, None))
    events = encode_events(train, vocabulary)
    assert [len(e) for e in events] == [len(s) for s in sequences]
    assert events[users.index("u")].tolist() == [FIRST_TOKEN + 1, FIRST_TOKEN]


def test_split_on_target_events_holds_out_the_last_purchase_and_drops_what_follows():
    df = pd.DataFrame(
        {
            "user_id": list("aaaaabbcc"),
            "item_id": ["1", "2", "2", "3", "4", "5", "6", "7", "8"],
            "timestamp": range(9),
            "event": ["view", "view", "purchase", "view", "view", "purchase", "view", "view", "view"],
        }
    )
    train, test = leave_last_out(df, ("purchase",))
    # a: purchase of 2 is the test, the later views are its future; b: purchase first: no
    # history, stays whole; c: never purchases: stays whole.
    assert list(zip(test.user_id, test.item_id)) == [("a", "2")]
    assert list(zip(train.user_id, train.item_id)) == [
        ("a", "1"),
        ("a", "2"),
        ("b", "5"),
        ("b", "6"),
        ("c", "7"),
        ("c", "8"),
    ]
    assert train.iloc[1]["event"] == "view"
    with pytest.raises(ValueError, match="known: 'purchase', 'view'"):
        leave_last_out(df, ("buy",))


# --- windows -----------------------------------------------------------------------------


def sequences_with_kinds(users=30, seed=0, num_items=40):
    """Kinds follow the items (token t has kind t % 3), so alignment is checkable."""
    rng = np.random.default_rng(seed)
    seqs = [
        rng.integers(FIRST_TOKEN, num_items + FIRST_TOKEN, rng.integers(2, 25)).astype(np.int64) for _ in range(users)
    ]
    kinds = [(s % 3 + FIRST_TOKEN).astype(np.int64) for s in seqs]
    weights = [(s % 5).astype(np.float32) / 2 for s in seqs]
    return seqs, kinds, weights


def test_event_windows_are_parallel_to_item_windows():
    seqs, kinds, weights = sequences_with_kinds()
    plan = window_plan(seqs, 8, np.random.default_rng(1))
    inputs, targets = fill_windows(seqs, plan, np.int32)
    kinds_in, kinds_out = fill_windows(kinds, plan, np.int32)
    (w_out,) = fill_windows(weights, plan, np.float32, (1,))
    real_in, real_out = inputs != PAD, targets != PAD
    assert (kinds_in[real_in] == inputs[real_in] % 3 + FIRST_TOKEN).all() and (kinds_in[~real_in] == PAD).all()
    assert (kinds_out[real_out] == targets[real_out] % 3 + FIRST_TOKEN).all()
    assert np.allclose(w_out[real_out], (targets[real_out] % 5) / 2) and (w_out[~real_out] == 0).all()
    old_inputs, old_targets = training_windows(seqs, 8, np.random.default_rng(1), dtype=np.int32)
    assert np.array_equal(old_inputs, inputs) and np.array_equal(old_targets, targets)
    with pytest.raises(ValueError, match="parallel"):
        fill_windows([k[:-1] for k in kinds], plan, np.int32)


@pytest.mark.parametrize("bucket", [False, True])
def test_batches_without_kinds_are_identical_and_carry_no_event_arrays(bucket):
    seqs, kinds, _ = sequences_with_kinds()
    cfg = TrainConfig(max_len=8, batch_size=7, bucket=bucket, loss="ce")
    plain = list(NextItemFamily(cfg, seqs, 40).batches(np.random.default_rng(3)))
    unread = NextItemFamily(
        TrainConfig(max_len=8, batch_size=7, bucket=bucket, loss="ce", read_events=False),
        seqs,
        40,
        events=kinds,
        event_kinds=KINDS,
    )
    assert unread.num_events == 0
    again = list(unread.batches(np.random.default_rng(3)))
    assert len(plain[0]) == 3  # inputs, targets, older items (ce masks seen items)
    assert len(plain) == len(again)
    for a, b in zip(plain, again):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    read = list(NextItemFamily(cfg, seqs, 40, events=kinds, event_kinds=KINDS).batches(np.random.default_rng(3)))
    for a, b in zip(plain, read):
        assert len(b) == 4 and all(torch.equal(x, y) for x, y in zip(a, b[:3]))
        inputs, kinds_in = b[0], b[3]
        assert torch.equal(kinds_in, torch.where(inputs != PAD, inputs % 3 + FIRST_TOKEN, PAD))


# --- models ------------------------------------------------------------------------------

# Fingerprints of the three models as they were before event kinds existed (same seed, same
# config): the sum and absolute sum of the initial state dict and scores of a fixed input.
BEFORE = {
    "sasrec": (28, 348.917968, 7489.14704, [-2.48671, 49.10717, 3.30053, 46.32526, 0.55466, 2.28264]),
    "gru4rec": (5, 25.057695, 5208.88782, [-1.15096, 0.58619, -1.56934, 0.5017, -1.36555, -0.00212]),
    "caser": (17, 58.813573, 4399.486114, [-0.69923, 0.96906, 2.6485, 2.68698, 2.53737, 2.56932]),
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_models_without_kinds_are_unchanged(name):
    config, module = MODELS[name]
    torch.manual_seed(0)
    model = module(config(num_items=30, max_len=8)).eval()
    x = torch.randint(2, 32, (3, 8))
    x[0, :4] = PAD
    state = model.state_dict()
    size, total, absolute, scores = BEFORE[name]
    assert len(state) == size and not any("event" in key for key in state)
    assert sum(v.double().sum() for v in state.values()).item() == pytest.approx(total, abs=1e-5)
    assert sum(v.double().abs().sum() for v in state.values()).item() == pytest.approx(absolute, abs=1e-4)
    with torch.no_grad():
        assert model(x)[:2, :3].flatten().tolist() == pytest.approx(scores, abs=1e-4)
    # with kinds: the same init for every other tensor, one more table
    torch.manual_seed(0)
    reading = module(config(num_items=30, max_len=8, num_events=3)).eval()
    extra = reading.state_dict()
    assert set(extra) - set(state) == {"event_emb.weight"}
    assert all(torch.equal(extra[k], v) for k, v in state.items())
    kinds = torch.where(x != PAD, torch.randint(OOV, 3 + FIRST_TOKEN, x.shape), PAD)
    with torch.no_grad():
        assert reading(x, kinds).shape == (3, 30)
        assert not torch.allclose(reading(x, kinds), model(x))  # the kinds change the scores
    with pytest.raises(ValueError, match="reads event kinds"):
        reading(x)
    with pytest.raises(ValueError, match="reads no event kinds"):
        model(x, kinds)


# --- objective ---------------------------------------------------------------------------


class FixedHidden(nn.Module):
    """A model whose hidden states are a given leaf tensor: the loss's gradient per position."""

    def __init__(self, hidden: torch.Tensor, num_items: int):
        super().__init__()
        self.hidden = hidden
        self.table = nn.Parameter(torch.randn(num_items, hidden.shape[-1], generator=torch.Generator().manual_seed(1)))

    def encode(self, item_seq, history_events=None):
        return self.hidden

    def score(self, h):
        return h @ self.table.T

    def output_embeddings(self):
        return self.table

    def output_bias(self):
        return None


def test_target_events_mask_the_loss_but_every_event_is_read():
    seqs, kinds, _ = sequences_with_kinds()
    purchase = FIRST_TOKEN + KINDS.index("purchase")
    cfg = TrainConfig(max_len=8, batch_size=64, loss="ce", target_events=("purchase",))
    family = NextItemFamily(cfg, seqs, 40, events=kinds, event_kinds=KINDS)
    batch = next(family.batches(np.random.default_rng(0)))
    inputs, targets, kinds_in = batch[0], batch[1], batch[3]
    # targets only where the next event is a purchase; the inputs keep every kind
    assert (targets[targets != PAD] % 3 + FIRST_TOKEN == purchase).all()
    assert set(kinds_in[inputs != PAD].tolist()) == {FIRST_TOKEN, FIRST_TOKEN + 1, FIRST_TOKEN + 2}
    assert ((targets != PAD).sum(dim=1) > 0).all()  # no window without something to predict
    # a position whose target is not a purchase has no gradient
    hidden = torch.randn(*inputs.shape, 8, requires_grad=True)
    loss = next_item_loss(FixedHidden(hidden, 40), inputs, targets)
    (grad,) = torch.autograd.grad(loss, hidden)
    masked = (targets == PAD) & (inputs != PAD)
    assert masked.any() and (grad[masked] == 0).all()
    assert (grad[targets != PAD].abs().sum(dim=-1) > 0).all()
    # validation holds out each user's last purchase, history before it
    for history, target in zip(family.val_histories, family.val_targets):
        assert target % 3 + FIRST_TOKEN == purchase and len(history) >= 2


def test_target_events_draw_negatives_by_the_popularity_of_what_is_predicted():
    # item 5 is viewed by everyone and never bought; item 6 is bought by everyone
    seqs = [np.array([FIRST_TOKEN + 5, FIRST_TOKEN + 6, FIRST_TOKEN + u % 4, FIRST_TOKEN + 6]) for u in range(20)]
    view, purchase = FIRST_TOKEN + KINDS.index("view"), FIRST_TOKEN + KINDS.index("purchase")
    kinds = [np.array([view, purchase, view, purchase]) for _ in seqs]
    cfg = TrainConfig(max_len=4, loss="sampled_softmax", negative_sampling="popularity", target_events=("purchase",))
    sampler = NextItemFamily(cfg, seqs, 10, events=kinds, event_kinds=KINDS)._loss.keywords["sampler"]
    assert sampler.probs[6] > sampler.probs[5] == sampler.probs.min()
    every = NextItemFamily(dataclasses.replace(cfg, target_events=()), seqs, 10, events=kinds, event_kinds=KINDS)
    assert every._loss.keywords["sampler"].probs[5] > sampler.probs[5]  # every kind counted without targets


def test_unknown_kinds_and_missing_event_column_are_clear_errors():
    seqs, kinds, _ = sequences_with_kinds()
    with pytest.raises(ValueError, match="unknown event kind.*'buy'.*known: 'cart', 'purchase', 'view'"):
        NextItemFamily(TrainConfig(target_events=("buy",)), seqs, 40, events=kinds, event_kinds=KINDS)
    with pytest.raises(ValueError, match="event_weights.*'buy'"):
        NextItemFamily(TrainConfig(event_weights={"buy": 2.0}), seqs, 40, events=kinds, event_kinds=KINDS)
    with pytest.raises(ValueError, match="need event kinds"):
        NextItemFamily(TrainConfig(target_events=("purchase",)), seqs, 40)
    with pytest.raises(ValueError, match="does not read event kinds"):
        NextItemFamily(TrainConfig(model="bpr_mf", read_events=True), seqs, 40, events=kinds, event_kinds=KINDS)
    with pytest.raises(ValueError, match="finite number >= 0"):
        TrainConfig(event_weights={"view": -1.0}).check()
    with pytest.raises(ValueError, match="classic baseline 'pop' takes no event kinds"):
        fit(TrainConfig(model="pop", target_events=("purchase",)), seqs, 40, events=kinds, event_kinds=KINDS)
    # a model that cannot read kinds trains on data with them when not asked to read them
    assert NextItemFamily(TrainConfig(model="bpr_mf"), seqs, 40, events=kinds, event_kinds=KINDS).num_events == 0


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "bce", "bpr"])
def test_weights_multiply_each_positions_loss(loss):
    torch.manual_seed(0)
    inputs = torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]])
    targets = torch.tensor([[0, 3, 4, 9], [6, 7, 8, 10]])
    hidden = torch.randn(2, 4, 8)
    model = FixedHidden(hidden, 12)
    sampler = NegativeSampler(torch.ones(12))
    options = {"loss": loss, "sampler": sampler, "negatives": 5}

    def run(weights=None, t=targets):
        torch.manual_seed(7)  # the same negatives every call
        return next_item_loss(model, inputs, t, weights=weights, **options).item()

    plain = run()
    assert run(torch.ones(2, 4)) == pytest.approx(plain, rel=1e-5)
    assert run(torch.full((2, 4), 2.0)) == pytest.approx(2 * plain, rel=1e-5)
    if loss == "ce":  # a zero weight is the position left out: sum over the others, / all M
        zero = torch.ones(2, 4)
        zero[1, 2] = 0
        dropped = targets.clone()
        dropped[1, 2] = PAD
        assert run(zero) * 7 == pytest.approx(run(t=dropped) * 6, rel=1e-5)


def test_event_weights_and_weight_column_reach_the_batches():
    seqs, kinds, weights = sequences_with_kinds()
    cfg = TrainConfig(max_len=8, batch_size=64, loss="ce", event_weights={"purchase": 3.0, "view": 0.5})
    family = NextItemFamily(cfg, seqs, 40, events=kinds, weights=weights, event_kinds=KINDS)
    for batch in family.batches(np.random.default_rng(0)):
        targets, w = batch[1], batch[-1]
        real = targets != PAD
        kind_weight = torch.tensor([1.0, 1.0, 1.0, 3.0, 0.5])[targets % 3 + FIRST_TOKEN]
        assert torch.allclose(w[real], kind_weight[real] * (targets[real] % 5).float() / 2)


@pytest.mark.parametrize(("name", "loss"), [("sasrec", "ce"), ("gru4rec", "sampled_softmax"), ("caser", "bpr")])
def test_event_aware_models_train(name, loss):
    seqs, kinds, weights = sequences_with_kinds(users=20)
    cfg = TrainConfig(
        model=name,
        epochs=1,
        eval_every=1,
        max_len=6,
        batch_size=64,
        loss=loss,
        negatives=5,
        hidden=8,
        target_events=("purchase",),
        event_weights={"view": 0.5},
    )
    result = fit(cfg, seqs, 40, progress=False, events=kinds, weights=weights, event_kinds=KINDS)
    assert result.settings["events"] == list(KINDS) and result.model.cfg.num_events == 3
    assert np.isfinite(result.history[0]["loss"]) and 0 <= result.best_metrics["ndcg@10"] <= 1
