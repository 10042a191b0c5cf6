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
    sequences: list[np.ndarray], max_len: int, rng: np.random.Generator, *, origins: bool = False
) -> tuple[np.ndarray, ...]:
    """Next-item windows covering every target of every sequence at least once.

    For a sequence s of length n, the target at position t (1 <= t < n) is s[t] and its input
    is s[:t]. A window ending at e holds inputs s[e-L:e] and targets s[e-L+1:e+1]. The first
    window ends at the latest event; earlier windows end every `max_len` steps before it,
    shifted by a random offset drawn per call so their boundaries move between epochs.

    Returns inputs, targets: (W, max_len) int64 each, left-padded with PAD; with `origins`, also
    (W, 2) int64: each window's sequence index and the position its inputs start at (what
    `older_items` needs).
    """
    inputs, targets, where = [], [], []
    for number, seq in enumerate(sequences):
        n = len(seq)
        if n < 2:
            continue
        ends = [n - 1]
        shift = int(rng.integers(0, max_len)) if n - 1 > max_len else 0
        e = n - 1 - max_len + shift
        while e >= 1 and n - 1 > max_len:
            ends.append(e)
            e -= max_len
        for e in ends:
            start = max(0, e - max_len)
            inputs.append(last_window(seq[start:e], max_len))
            targets.append(last_window(seq[start + 1 : e + 1], max_len))
            where.append((number, start))
    if not inputs:
        empty = np.zeros((0, max_len), dtype=np.int64)
        return (empty, empty, np.zeros((0, 2), dtype=np.int64)) if origins else (empty, empty)
    if origins:
        return np.stack(inputs), np.stack(targets), np.array(where, dtype=np.int64)
    return np.stack(inputs), np.stack(targets)


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
