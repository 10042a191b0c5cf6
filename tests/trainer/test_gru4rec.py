"""GRU4Rec specifics: the in-graph right-alignment and where its two dropouts act."""

import torch

from recsys.schema import PAD
from trainer.models.gru4rec import GRU4Rec, GRU4RecConfig, right_align


def test_right_align_moves_real_items_first_and_counts_pads():
    seq = torch.tensor([[PAD, PAD, 5, 6], [2, 3, 4, 5], [PAD, PAD, PAD, PAD]])
    aligned, pads = right_align(seq)
    assert aligned.tolist() == [[5, 6, PAD, PAD], [2, 3, 4, 5], [PAD, PAD, PAD, PAD]]
    assert pads.tolist() == [[2], [0], [4]]


def test_output_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecConfig(num_items=20, hidden=8, gru_hidden=16, dropout=0.0, out_dropout=0.5))
    x = torch.tensor([[PAD, 3, 4, 5]])
    model.train()
    assert not torch.allclose(model.encode(x), model.encode(x))  # fresh masks on every call
    model.eval()
    torch.testing.assert_close(model.encode(x), model.encode(x))


def test_without_dropout_training_and_eval_agree():
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecConfig(num_items=20, hidden=8, gru_hidden=16, dropout=0.0, out_dropout=0.0))
    x = torch.tensor([[PAD, 3, 4, 5]])
    trained = model.train().encode(x)
    torch.testing.assert_close(trained, model.eval().encode(x))
