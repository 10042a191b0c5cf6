import numpy as np

from recsys.schema import PAD
from trainer.data.batches import last_window, training_windows


def test_last_window_left_pads_and_truncates():
    assert last_window(np.array([5, 6]), 4).tolist() == [PAD, PAD, 5, 6]
    assert last_window(np.array([2, 3, 4, 5, 6]), 3).tolist() == [4, 5, 6]
    assert last_window(np.array([], dtype=np.int64), 2).tolist() == [PAD, PAD]


def test_short_sequence_gives_one_window_of_next_items():
    inputs, targets = training_windows([np.array([2, 3, 4])], 4, np.random.default_rng(0))
    assert inputs.tolist() == [[PAD, PAD, 2, 3]]
    assert targets.tolist() == [[PAD, PAD, 3, 4]]


def test_every_target_is_covered_and_inputs_precede_targets():
    seq = np.arange(2, 40)
    for seed in range(5):
        inputs, targets = training_windows([seq, np.array([7])], 8, np.random.default_rng(seed))
        covered = set(targets[targets != PAD].tolist())
        assert covered == set(seq[1:].tolist())  # the one-event sequence contributes nothing
        mask = targets != PAD
        # in this strictly increasing sequence each target is the item right after its input
        assert np.all(targets[mask] == inputs[mask] + 1)
        assert targets[0, -1] == seq[-1]  # the first window ends at the latest event


def test_bucketed_batches_keep_every_target_and_trim_padding():
    from trainer.data.batches import bucketed_batches

    rng = np.random.default_rng(0)
    seqs = [np.arange(2, 2 + n) for n in (3, 4, 30, 31, 5)]
    inputs, targets = training_windows(seqs, 12, rng)
    batches = bucketed_batches(inputs, targets, 2, rng)
    got = sorted(t for _, tb, _ in batches for t in tb[tb != PAD].tolist())
    assert got == sorted(targets[targets != PAD].tolist())
    widths = [ib.shape[1] for ib, _, _ in batches]
    assert min(widths) < 12 and max(widths) == 12  # short windows travel in short batches
    for ib, tb, rows in batches:
        assert ib.shape == tb.shape and (tb[:, 0] != PAD).any() or ib.shape[1] == 1
        np.testing.assert_array_equal(tb, targets[rows, -ib.shape[1] :])  # rows name the windows


def test_older_items_are_what_the_user_saw_before_each_window():
    from trainer.data.batches import older_items

    seqs = [np.arange(2, 2 + 25), np.array([5, 6, 7])]
    inputs, targets, origins = training_windows(seqs, 10, np.random.default_rng(1), origins=True)
    assert len(origins) == len(inputs)
    older = older_items(seqs, origins, np.arange(len(inputs)))
    for row, (number, start) in enumerate(origins):
        seq = seqs[number]
        kept = older[row][older[row] != PAD]
        np.testing.assert_array_equal(kept, seq[:start])
        first = inputs[row][inputs[row] != PAD][0]
        assert first == seq[start]  # the window's inputs begin where the older items end


def test_windows_are_the_same_in_int32_and_across_chunks():
    rng = np.random.default_rng(3)
    seqs = [rng.integers(1, 500, rng.integers(1, 90)) for _ in range(200)]
    wide = training_windows(seqs, 16, np.random.default_rng(0), origins=True)
    narrow = training_windows(seqs, 16, np.random.default_rng(0), origins=True, dtype=np.int32, chunk=7)
    assert narrow[0].dtype == np.int32 and wide[0].dtype == np.int64
    for a, b in zip(wide, narrow):
        assert np.array_equal(a, b)
    # each window is the reference construction: last_window of its slice of the sequence
    for (number, start), inputs, targets in zip(wide[2], wide[0], wide[1]):
        n_inputs = int((targets != PAD).sum())
        seq = seqs[number]
        assert np.array_equal(inputs, last_window(seq[start : start + n_inputs], 16))
        assert np.array_equal(targets, last_window(seq[start + 1 : start + 1 + n_inputs], 16))
