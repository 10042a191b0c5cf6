"""One parametrized smoke suite over every registered model, plus SASRec specifics."""

import pytest
import torch

from recsys.schema import FIRST_TOKEN, PAD
from trainer.families.losses import next_item_loss
from trainer.families.next_item import TrainConfig
from trainer.models import MODELS

NUM_ITEMS, MAX_LEN = 30, 8


def make(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = TrainConfig(model=name, max_len=MAX_LEN, hidden=16).model_config(NUM_ITEMS)
    return MODELS[name][1](cfg).eval()


def test_registry_holds_the_trainable_sequential_models_and_the_classic_ones_apart():
    from trainer.models import CLASSIC_MODELS

    assert set(MODELS) == {"sasrec", "gru4rec", "caser", "bpr_mf", "content_sasrec"}
    assert set(CLASSIC_MODELS) == {"pop", "itemknn", "ease"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scores_shape_and_finite_with_heavy_padding(name):
    model = make(name)
    x = torch.randint(FIRST_TOKEN, NUM_ITEMS + FIRST_TOKEN, (3, MAX_LEN))
    x[0, : MAX_LEN - 1] = PAD  # one real item
    x[1, :] = PAD  # nothing at all
    out = model(x)
    assert out.shape == (3, NUM_ITEMS)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_left_padding_does_not_change_scores(name):
    model = make(name)
    seq = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[PAD] * (MAX_LEN - 3) + [5, 6, 7]])
    torch.testing.assert_close(model(seq), model(padded), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_future_items_do_not_leak_into_earlier_positions(name):
    model = make(name)
    a = torch.tensor([[3, 4, 5, 6]])
    b = torch.tensor([[3, 4, 5, 9]])
    ha, hb = model.encode(a), model.encode(b)
    torch.testing.assert_close(ha[:, :3], hb[:, :3])
    assert not torch.allclose(ha[:, 3], hb[:, 3])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_ignores_padded_targets_and_training_lowers_it(name):
    model = make(name)
    model.train()
    inputs = torch.tensor([[PAD, PAD, 2, 3], [2, 3, 4, 5]])
    targets = torch.tensor([[PAD, PAD, 3, 4], [3, 4, 5, 6]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = next_item_loss(model, inputs, targets).item()
    for _ in range(40):
        loss = next_item_loss(model, inputs, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 2


def test_train_config_keeps_model_defaults_unless_given():
    assert TrainConfig(model="gru4rec").model_config(10).dropout == MODELS["gru4rec"][0](num_items=10).dropout
    assert TrainConfig(model="caser", dropout=0.1).model_config(10).dropout == 0.1
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(model="nope").model_config(10)
