"""Why an item was recommended, from the served ONNX model alone (no torch, no training data).

The exported models output scores only (no attention weights), so attributions are
model-agnostic and measured, not read off the network:

- `because_items` (every model that reads the user's history): leave-one-out over the
  history. For each distinct known item h in the window the model reads, one batch row holds
  the history with every occurrence of h removed (older events slide into the window, as if
  h had never happened); contribution(h, item) = score(item | history) - score(item | history
  without h). All rows, and the unchanged history, go through ONE batched ONNX run.
- `because_features` (feature-based rankers, task "rank" / "rating"): ablation per feature
  field. Each field (a user or item feature, the item id, the whole history) is set to its
  missing value (PAD token, or 0 = the training mean for numeric features) in one row per
  (field, item); inputs without per-feature columns (item id, history) are one field each;
  contribution = score - ablated score. Same single batched run as the history
  rows. Next-item models that read user features (two-tower, user_features) get the same
  ablation of each user feature (`explain_user_features`).

Contributions are in the model's score units and signed: positive means the input pushed the
item up. `because_items` keeps the positive ones, strongest first; `because_features` keeps
the largest by absolute value, strongest first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recsys.schema import FIRST_TOKEN, PAD

__all__ = [
    "MAX_EXPLAINED",
    "Attribution",
    "Explanation",
    "explain_feature_ranker",
    "explain_next_item",
    "explain_user_features",
    "leave_one_out_windows",
    "window_scorer",
]

# Attributions returned per recommended item.
MAX_BECAUSE_ITEMS = 3
MAX_BECAUSE_FEATURES = 5
# Items explained per request: the batched run grows with (items x fields) for rankers.
MAX_EXPLAINED = 100


@dataclass(frozen=True)
class Attribution:
    name: str  # a history item id, or a feature name ("user.age", "item.genres", "item.id", "user.history")
    contribution: float  # score with the input minus score without it
    title: str = ""


@dataclass(frozen=True)
class Explanation:
    """Per explained item (in the order given), its attributions."""

    because_items: list[list[Attribution]]
    because_features: list[list[Attribution]]


def leave_one_out_windows(tokens: np.ndarray, length: int, kinds: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """tokens (T,) int64, oldest first -> (removed (H,), windows (1 + H, length)).

    Row 0 is the unchanged history's last `length` tokens; row 1 + j is the history without
    any occurrence of removed[j], left-padded with PAD. removed are the distinct known items
    (>= FIRST_TOKEN) of the unchanged window, most recent first. With `kinds` (T,), the event
    kinds of `tokens`, a third array holds the kinds of each row's events, aligned with it.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    window = tokens[-length:] if length else tokens[:0]
    removed = []
    for t in window[::-1]:
        if t >= FIRST_TOKEN and t not in removed:
            removed.append(int(t))
    keeps = [None] + [tokens != t for t in removed]
    rows = _left_rows(tokens, keeps, length)
    if kinds is None:
        return np.array(removed, dtype=np.int64), rows
    return np.array(removed, dtype=np.int64), rows, _left_rows(np.asarray(kinds, dtype=np.int64), keeps, length)


def _left_rows(values: np.ndarray, keeps: list, length: int) -> np.ndarray:
    """One left-padded row of the last `length` kept values per mask in `keeps` (None: all)."""
    rows = np.full((len(keeps), length), PAD, dtype=np.int64)
    for r, keep in enumerate(keeps):
        seq = values if keep is None else values[keep]
        tail = seq[-length:] if length else seq[:0]
        if len(tail):
            rows[r, -len(tail) :] = tail
    return rows


def _top_positive(contrib: np.ndarray, removed: np.ndarray, item_ids, titles, limit: int) -> list[Attribution]:
    order = np.argsort(-contrib, kind="stable")
    out = []
    for j in order[:limit]:
        if not contrib[j] > 0:
            break
        col = int(removed[j]) - FIRST_TOKEN
        out.append(Attribution(item_ids[col], float(contrib[j]), titles[col]))
    return out


def window_scorer(
    session, user_inputs, user_features: dict, max_len: int, events_input: str = ""
) -> tuple[Callable, int]:
    """(score(windows (B, L), kinds (B, L) or None) -> (B, N), L) for a next-item model: the
    history alone, or, for models that also read user features (two-tower; `user_inputs` their
    FeatureInputs), the user's feature row repeated beside each window; `events_input` names the
    graph's event-kind input, fed `kinds`, for models that read the kind of each event."""
    if user_inputs is None:
        if not events_input:
            return lambda windows, kinds=None: session.scores(windows), max_len
        return lambda windows, kinds: session.run({session.input_name: windows, events_input: kinds}), max_len
    one = user_inputs.feeds(user_features, np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))
    name = user_inputs.names["user.history"]

    def score(windows: np.ndarray, kinds: np.ndarray | None = None) -> np.ndarray:
        feeds = {key: np.repeat(value, len(windows), axis=0) for key, value in one.items()}
        feeds[name] = windows
        if events_input:
            feeds[events_input] = kinds
        return session.run(feeds)

    return score, max(1, user_inputs.encoder.history_len)


def explain_next_item(
    score: Callable[[np.ndarray], np.ndarray],
    tokens: np.ndarray,
    max_len: int,
    item_cols: np.ndarray,
    item_ids,
    titles,
    limit: int = MAX_BECAUSE_ITEMS,
    *,
    kinds: np.ndarray | None = None,
) -> Explanation:
    """Leave-one-out attributions of a next-item model's scores of `item_cols` (catalogue
    columns) to the user's history `tokens` (oldest first; `kinds` their event-kind tokens for
    a model that reads them: removing an item removes its events' kinds with it). `score` maps
    (B, max_len) windows and kinds to (B, N) scores (`window_scorer`). One run of 1 + H rows."""
    removed, rows, *kind_rows = leave_one_out_windows(tokens, max_len, kinds)
    cols = np.asarray(item_cols, dtype=np.int64)
    if not len(removed):
        return Explanation([[] for _ in cols], [[] for _ in cols])
    scores = np.asarray(score(rows, *kind_rows))[:, cols].astype(np.float64)  # (1 + H, k)
    contrib = scores[0][None, :] - scores[1:]  # (H, k)
    items = [_top_positive(contrib[:, c], removed, item_ids, titles, limit) for c in range(len(cols))]
    return Explanation(items, [[] for _ in cols])


def explain_user_features(
    session,
    user_inputs,
    user_features: dict,
    tokens: np.ndarray,
    item_cols: np.ndarray,
    kinds: np.ndarray | None = None,
    limit: int = MAX_BECAUSE_FEATURES,
) -> list[list[Attribution]]:
    """Ablation of each user feature of a next-item model that reads them (`user_inputs` its
    FeatureInputs; `kinds` the history's event tokens for a model that reads them): per
    catalogue column of `item_cols`, the largest |score - score with that feature missing|
    first. One run of 1 + F rows."""
    cols = np.asarray(item_cols, dtype=np.int64)
    fields = [f for f in _field_ablations(user_inputs) if f[1] in ("user.cat", "user.num")]
    if not fields:
        return [[] for _ in cols]
    base = user_inputs.feeds(user_features, tokens, np.zeros(1, dtype=np.int64), history_events=kinds)  # 1 row each
    blocks = [base]
    for _, source, j in fields:
        block = {key: value.copy() for key, value in base.items()}
        column = block[user_inputs.names[source]]
        column[:, j] = 0.0 if column.dtype.kind == "f" else PAD
        blocks.append(block)
    feeds = {key: np.concatenate([b[key] for b in blocks]) for key in base}
    scores = np.asarray(session.run(feeds))[:, cols].astype(np.float64)  # (1 + F, k)
    contrib = scores[0][None, :] - scores[1:]  # (F, k)
    out = []
    for c in range(len(cols)):
        order = np.argsort(-np.abs(contrib[:, c]), kind="stable")[:limit]
        out.append([Attribution(fields[f][0], float(contrib[f, c])) for f in order])
    return out


def _field_ablations(inputs) -> list[tuple[str, str, object]]:
    """(feature name, input source, index into the input's last axes) per ablatable field."""
    enc = inputs.encoder
    fields: list[tuple[str, str, object]] = []
    for source, specs in (
        ("user.cat", enc.user_cat),
        ("user.num", enc.user_num),
        ("item.cat", enc.item_cat),
        ("item.num", enc.item_num),
        ("item.multi", enc.item_multi),
    ):
        if source in inputs.names:
            prefix = source.split(".")[0]
            fields += [(f"{prefix}.{spec.name}", source, j) for j, spec in enumerate(specs)]
    # Inputs without per-feature columns (item.id, user.history, ...) are ablated whole.
    per_feature = ("user.cat", "user.num", "item.cat", "item.num", "item.multi")
    fields += [(source, source, None) for source in sorted(inputs.names) if source not in per_feature]
    return fields


def explain_feature_ranker(
    session,
    inputs,
    user_features: dict,
    tokens: np.ndarray,
    item_tokens: np.ndarray,
    item_ids,
    titles,
    limit_items: int = MAX_BECAUSE_ITEMS,
    limit_features: int = MAX_BECAUSE_FEATURES,
    user_id: str = "",
) -> Explanation:
    """Attributions of a feature-based ranker's scores of `item_tokens` (k,): per feature field
    (ablation) and, when the model reads the history, per history item (leave-one-out).

    `inputs` is the server's FeatureInputs; `tokens` the user's history tokens, oldest first.
    One ONNX run of k * (1 + H + F) rows (H history items, F fields).
    """
    item_tokens = np.asarray(item_tokens, dtype=np.int64)
    k = len(item_tokens)
    base = inputs.feeds(user_features, tokens, item_tokens, user_id, row_per_candidate=True)  # each (k, ...)
    removed = np.zeros(0, dtype=np.int64)
    blocks = [base]
    if "user.history" in inputs.names:
        removed, windows = leave_one_out_windows(tokens, max(1, inputs.encoder.history_len))
        name = inputs.names["user.history"]
        for w in windows[1:]:
            block = dict(base)
            block[name] = np.tile(w, (k, 1))
            blocks.append(block)
    fields = _field_ablations(inputs)
    for _, source, j in fields:
        block = {key: value.copy() if key == inputs.names[source] else value for key, value in base.items()}
        column = block[inputs.names[source]]
        missing = 0.0 if column.dtype.kind == "f" else PAD
        if j is None:
            column[...] = missing
        else:
            column[:, j] = missing
        blocks.append(block)
    feeds = {key: np.concatenate([b[key] for b in blocks]) for key in base}
    scores = session.run(feeds).astype(np.float64).reshape(len(blocks), k)  # (1 + H + F, k)
    contrib = scores[0][None, :] - scores[1:]
    history_contrib, field_contrib = contrib[: len(removed)], contrib[len(removed) :]
    because_items = [_top_positive(history_contrib[:, c], removed, item_ids, titles, limit_items) for c in range(k)]
    because_features = []
    for c in range(k):
        order = np.argsort(-np.abs(field_contrib[:, c]), kind="stable")[:limit_features]
        because_features.append([Attribution(fields[f][0], float(field_contrib[f, c])) for f in order])
    return Explanation(because_items, because_features)
