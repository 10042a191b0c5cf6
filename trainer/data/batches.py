"""Turning users' item sequences into padded training windows and evaluation inputs.

Sequences are int64 item tokens (FIRST_TOKEN and up), oldest first. Every window is
left-padded with PAD to `max_len`, matching what the servers feed the exported model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.schema import PAD

__all__ = [
    "WindowPlan",
    "bucket_rows",
    "bucketed_batches",
    "fill_windows",
    "last_window",
    "last_windows",
    "older_items",
    "training_windows",
    "window_plan",
]


def last_window(seq: np.ndarray, max_len: int) -> np.ndarray:
    """The `max_len` most recent tokens of `seq`, left-padded: shape (max_len,)."""
    out = np.full(max_len, PAD, dtype=np.int64)
    tail = seq[-max_len:]
    if len(tail):
        out[-len(tail) :] = tail
    return out


def last_windows(sequences: list[np.ndarray], max_len: int) -> np.ndarray:
    """(len(sequences), max_len) int64: each sequence's last_window."""
    out = np.full((len(sequences), max_len), PAD, dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-max_len:]
        if len(tail):
            out[row, -len(tail) :] = tail
    return out


@dataclass(frozen=True)
class WindowPlan:
    """Where each training window of an epoch lies: window w covers sequence `number[w]` with
    its last input at position `end[w]`; `offset` is where each sequence starts in a flat
    copy of all of them. Values parallel to the sequences (event kinds, weights) are cut into
    windows by the same plan (fill_windows), so they stay aligned with the item windows."""

    max_len: int
    lengths: np.ndarray  # (S,) int64 events per sequence
    number: np.ndarray  # (W,) int64 sequence of each window
    end: np.ndarray  # (W,) int64 position of each window's last input

    @property
    def origins(self) -> np.ndarray:
        """(W, 2) int64: each window's sequence index and the position its inputs start at."""
        return np.stack([self.number, np.maximum(self.end - self.max_len, 0)], axis=1).astype(np.int64)


def window_plan(sequences: list[np.ndarray], max_len: int, rng: np.random.Generator) -> WindowPlan:
    """Next-item windows covering every target of every sequence at least once.

    For a sequence s of length n, the target at position t (1 <= t < n) is s[t] and its input
    is s[:t]. A window ending at e holds inputs s[e-L:e] and targets s[e-L+1:e+1]. The first
    window ends at the latest event; earlier windows end every `max_len` steps before it,
    shifted by a random offset drawn per call so their boundaries move between epochs.
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
    return WindowPlan(max_len, lengths, number, end)


def fill_windows(
    values: list[np.ndarray], plan: WindowPlan, dtype: type, shifts: tuple[int, ...] = (0, 1), chunk: int = 8192
) -> list[np.ndarray]:
    """Per shift, a (W, max_len) array of `dtype`: window w's row holds values[number[w]] at
    the window's input positions + shift (0: aligned with the inputs, 1: with the targets),
    left-padded with 0 (PAD for tokens). `values` must have the plan's sequence lengths. The
    windows are written straight into the arrays, `chunk` at a time: besides them, memory
    holds one flat copy of the values and O(chunk x max_len) scratch."""
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    if not np.array_equal(lengths, plan.lengths):
        raise ValueError("values must be parallel to the sequences the windows were planned on")
    max_len, width = plan.max_len, len(plan.number)
    out = [np.full((width, max_len), PAD, dtype=dtype) for _ in shifts]
    if width:
        offset = np.cumsum(lengths) - lengths  # where each sequence starts in `flat`
        flat = np.empty(int(lengths.sum()), dtype=dtype)
        for seq, at in zip(values, offset.tolist()):
            flat[at : at + len(seq)] = seq
        cols = np.arange(max_len)
        for a in range(0, width, chunk):
            rel = plan.end[a : a + chunk, None] - max_len + cols  # (w, L) position of each input in its sequence
            valid = rel >= 0
            at = np.where(valid, rel, 0) + offset[plan.number[a : a + chunk], None]
            for array, shift in zip(out, shifts, strict=True):
                array[a : a + chunk][valid] = flat[at[valid] + shift]
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
    """Next-item windows covering every target of every sequence at least once (window_plan).

    Returns inputs, targets: (W, max_len) of `dtype` (int32 halves the memory when the tokens
    fit) each, left-padded with PAD; with `origins`, also (W, 2) int64: each window's sequence
    index and the position its inputs start at (what `older_items` needs). See fill_windows
    for the memory held.
    """
    plan = window_plan(sequences, max_len, rng)
    inputs, targets = fill_windows(sequences, plan, dtype, (0, 1), chunk)
    if origins:
        return inputs, targets, plan.origins
    return inputs, targets


def older_items(sequences: list[np.ndarray], origins: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(B, K) int64: for the windows `rows`, the tokens their user saw before the window's
    first input (oldest first, right-padded with PAD to the longest); K >= 1."""
    older = [sequences[number][:start] for number, start in origins[rows]]
    out = np.full((len(older), max([len(o) for o in older] + [1])), PAD, dtype=np.int64)
    for row, tokens in enumerate(older):
        out[row, : len(tokens)] = tokens
    return out


def bucket_rows(inputs: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Batches of windows of similar length as (rows, width): windows sorted by their number
    of inputs (random order among equals), cut into batches, the batches shuffled; `width` is
    the batch's longest window, so `array[rows, -width:]` trims its all-padding left columns
    from the inputs and from any array aligned with them."""
    lengths = (inputs != PAD).sum(axis=1)
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batches.append((idx, max(int(lengths[idx].max()), 1)))
    return [batches[i] for i in rng.permutation(len(batches))]


def bucketed_batches(
    inputs: np.ndarray, targets: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches of windows of similar length, each trimmed of its all-padding left columns
    (bucket_rows); every model here ignores left padding, so trimming changes no result, only
    the work: with long `max_len` most short windows are padding.
    Returns (inputs, targets, rows) per batch, rows the windows' indices.
    """
    return [(inputs[idx, -width:], targets[idx, -width:], idx) for idx, width in bucket_rows(inputs, batch_size, rng)]
