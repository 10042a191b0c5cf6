"""Turning users' item sequences into padded training windows and evaluation inputs.

Sequences are int64 item tokens (FIRST_TOKEN and up), oldest first. Every window is
left-padded with PAD to `max_len`, matching what the servers feed the exported model.
"""

from __future__ import annotations

import numpy as np

from recsys.schema import PAD

__all__ = ["bucketed_batches", "last_window", "older_items", "training_windows"]


def last_window(seq: np.ndarray, max_len: int) -> np.ndarray:
    """The `max_len` most recent tokens of `seq`, left-padded: shape (max_len,)."""
    out = np.full(max_len, PAD, dtype=np.int64)
    tail = seq[-max_len:]
    if len(tail):
        out[-len(tail) :] = tail
    return out


def training_windows(
    sequences: list[np.ndarray],
    max_len: int,
    rng: np.random.Generator,
    *,
    origins: bool = False,
    dtype: type = np.int64,
    chunk: int = 8192,
) -> tuple[np.ndarray, ...]:
    """Next-item windows covering every target of every sequence at least once.

    For a sequence s of length n, the target at position t (1 <= t < n) is s[t] and its input
    is s[:t]. A window ending at e holds inputs s[e-L:e] and targets s[e-L+1:e+1]. The first
    window ends at the latest event; earlier windows end every `max_len` steps before it,
    shifted by a random offset drawn per call so their boundaries move between epochs.

    Returns inputs, targets: (W, max_len) of `dtype` (int32 halves the memory when the tokens
    fit) each, left-padded with PAD; with `origins`, also (W, 2) int64: each window's sequence
    index and the position its inputs start at (what `older_items` needs). The windows are
    written straight into these arrays, `chunk` windows at a time: besides them, memory holds
    one flat copy of the events and O(chunk x max_len) scratch.
    """
    lengths = np.fromiter((len(seq) for seq in sequences), dtype=np.int64, count=len(sequences))
    last = lengths - 1  # end of each sequence's first window
    long = last > max_len
    shift = np.zeros(len(lengths), dtype=np.int64)
    shift[long] = rng.integers(0, max_len, int(long.sum()))
    second = last - max_len + shift  # end of the second window (long sequences)
    extra = np.where(long & (second >= 1), (second - 1) // max_len + 1, 0)
    counts = np.where(lengths >= 2, 1 + extra, 0)  # windows per sequence
    number = np.repeat(np.arange(len(lengths)), counts)  # (W,) sequence of each window
    j = np.arange(len(number)) - np.repeat(np.cumsum(counts) - counts, counts)  # window's rank in its sequence
    end = np.where(j == 0, last[number], second[number] - (j - 1) * max_len)  # (W,)
    width = len(number)
    inputs = np.full((width, max_len), PAD, dtype=dtype)
    targets = np.full((width, max_len), PAD, dtype=dtype)
    if width:
        offset = np.cumsum(lengths) - lengths  # where each sequence starts in `flat`
        flat = np.empty(int(lengths.sum()), dtype=dtype)
        for seq, at in zip(sequences, offset.tolist()):
            flat[at : at + len(seq)] = seq
        cols = np.arange(max_len)
        for a in range(0, width, chunk):
            rel = end[a : a + chunk, None] - max_len + cols  # (w, L) position of each input in its sequence
            valid = rel >= 0
            at = np.where(valid, rel, 0) + offset[number[a : a + chunk], None]
            inputs[a : a + chunk][valid] = flat[at[valid]]
            targets[a : a + chunk][valid] = flat[at[valid] + 1]
    if origins:
        return inputs, targets, np.stack([number, np.maximum(end - max_len, 0)], axis=1).astype(np.int64)
    return inputs, targets


def older_items(sequences: list[np.ndarray], origins: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(B, K) int64: for the windows `rows`, the tokens their user saw before the window's
    first input (oldest first, right-padded with PAD to the longest); K >= 1."""
    older = [sequences[number][:start] for number, start in origins[rows]]
    out = np.full((len(older), max([len(o) for o in older] + [1])), PAD, dtype=np.int64)
    for row, tokens in enumerate(older):
        out[row, : len(tokens)] = tokens
    return out


def bucketed_batches(
    inputs: np.ndarray, targets: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches of windows of similar length, each trimmed of its all-padding left columns.

    Windows are sorted by their number of targets (random order among equals), cut into
    batches, and the batches shuffled; every model here ignores left padding, so trimming
    changes no result, only the work: with long `max_len` most short windows are padding.
    Returns (inputs, targets, rows) per batch, rows the windows' indices.
    """
    lengths = (targets != PAD).sum(axis=1)
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(int(lengths[idx].max()), 1)
        batches.append((inputs[idx, -width:], targets[idx, -width:], idx))
    return [batches[i] for i in rng.permutation(len(batches))]
