"""The artifact's ONNX graph, fed as the inference server feeds it (inference_server/pipeline.py).

Every scorer answers `scores(users, wanted) -> (B, N)` float32 over item columns for B users
the artifact knows; `wanted` (B, N) bool marks the columns the caller will read. Next-item
graphs score the whole catalogue in one run and ignore it; feature-based rankers score only
the wanted (user, item) rows, leaving -inf elsewhere (`whole_catalogue` says which).
`needs_history` is the server's fallback rule: such a model answers with popularity for a user
without one indexed item in the history.

    SequenceScorer     task next_item, input user.history: (B, L) left-padded windows, and
                       user.history_events (their event kinds) when the model reads kinds
    UserFeatureScorer  task next_item reading user.cat / user.num too (two-tower): one row per user
    PairScorer         task rank / rating: one row per (user, candidate), through FeatureInputs
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from inference_server.feature_inputs import FeatureInputs
from recsys.artifact import SOURCE_USER_HISTORY, SOURCE_USER_HISTORY_EVENTS, read_user_index
from recsys.onnx_session import ModelSession
from recsys.schema import FIRST_TOKEN, PAD
from trainer.evaluation.tables import ArtifactTables

__all__ = ["PairScorer", "Scorer", "SequenceScorer", "UserFeatureScorer"]

BATCH_ROWS = 8192  # (user, item) rows per ONNX run of a feature-based model


class Scorer(Protocol):
    needs_history: bool  # popularity answers a user without one indexed item in the history
    whole_catalogue: bool  # scores every column in one run, whatever `wanted` says

    def scores(self, users: Sequence[str], wanted: np.ndarray) -> np.ndarray: ...


def _session(artifact_dir: str | Path, tables: ArtifactTables) -> ModelSession:
    return ModelSession(artifact_dir, tables.manifest, device="cpu", threads=0)


class PopularityScorer:
    """The baseline beside every model: each user gets the training popularity of the items."""

    needs_history = False
    whole_catalogue = True

    def __init__(self, tables: ArtifactTables):
        self.popularity = tables.popularity.astype(np.float32)

    def scores(self, users: Sequence[str], wanted: np.ndarray) -> np.ndarray:
        return np.tile(self.popularity, (len(users), 1))  # (B, N)


class SequenceScorer:
    needs_history = whole_catalogue = True

    def __init__(self, artifact_dir: str | Path, tables: ArtifactTables):
        self.tables, self.session = tables, _session(artifact_dir, tables)
        inputs = {i.source: i.name for i in tables.manifest.inputs}
        self.items_input = inputs.get(SOURCE_USER_HISTORY, "item_seq")
        self.events_input = inputs.get(SOURCE_USER_HISTORY_EVENTS)  # None: the model reads no kinds

    def scores(self, users: Sequence[str], wanted: np.ndarray) -> np.ndarray:
        max_len = self.tables.manifest.max_history
        windows = np.full((len(users), max_len), PAD, dtype=np.int64)  # (B, L)
        kinds = np.full((len(users), max_len), PAD, dtype=np.int64) if self.events_input else None
        for r, user in enumerate(users):
            tail = self.tables.history(user)[-max_len:]
            if len(tail):
                windows[r, -len(tail) :] = tail
                if kinds is not None:
                    kinds[r, -len(tail) :] = self.tables.events(user)[-max_len:]
        if kinds is None:
            return self.session.scores(windows)
        return self.session.run({self.items_input: windows, self.events_input: kinds})


class UserFeatureScorer:
    needs_history = whole_catalogue = True

    def __init__(self, artifact_dir: str | Path, tables: ArtifactTables):
        self.tables, self.session = tables, _session(artifact_dir, tables)
        self.inputs = FeatureInputs(tables.manifest, tables.index.item_ids)

    def scores(self, users: Sequence[str], wanted: np.ndarray) -> np.ndarray:
        one = np.zeros(1, dtype=np.int64)  # no candidate: one row per user
        rows = [self.inputs.feeds(self.tables.user_features.get(u, {}), self.tables.history(u), one) for u in users]
        return self.session.run({name: np.concatenate([r[name] for r in rows]) for name in rows[0]})


class PairScorer:
    needs_history = whole_catalogue = False

    def __init__(self, artifact_dir: str | Path, tables: ArtifactTables, batch_rows: int = BATCH_ROWS):
        self.tables, self.session, self.batch_rows = tables, _session(artifact_dir, tables), batch_rows
        manifest = tables.manifest
        reads_ids = any(i.source == "user.id" for i in manifest.inputs)
        self.inputs = FeatureInputs(
            manifest, tables.index.item_ids, read_user_index(artifact_dir) if reads_ids else None
        )
        features = tables.item_features
        self.inputs.load_items(lambda ids: [(i, features.get(i)) for i in ids])

    def scores(self, users: Sequence[str], wanted: np.ndarray) -> np.ndarray:
        rows, cols = np.nonzero(wanted)
        out = np.full(wanted.shape, -np.inf, dtype=np.float32)
        out[rows, cols] = self.pair_scores([users[r] for r in rows], cols + FIRST_TOKEN)
        return out

    def pair_scores(self, users: Sequence[str], tokens: np.ndarray) -> np.ndarray:
        """(R,) scores of the rows (users[r], item token tokens[r]), in row order."""
        tokens = np.asarray(tokens, dtype=np.int64)
        out = np.empty(len(tokens), dtype=np.float32)
        groups: dict[str, list[int]] = {}
        for r, user in enumerate(users):
            groups.setdefault(user, []).append(r)
        pending: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        size = 0
        for user, positions in groups.items():
            for start in range(0, len(positions), self.batch_rows):
                piece = np.asarray(positions[start : start + self.batch_rows])
                feeds = self.inputs.feeds(
                    self.tables.user_features.get(user, {}),
                    self.tables.history(user),
                    tokens[piece],
                    user,
                    row_per_candidate=True,
                )
                pending.append((piece, feeds))
                size += len(piece)
                if size >= self.batch_rows:
                    self._run(pending, out)
                    pending, size = [], 0
        if pending:
            self._run(pending, out)
        return out

    def _run(self, pending: list[tuple[np.ndarray, dict[str, np.ndarray]]], out: np.ndarray) -> None:
        names = pending[0][1]
        feeds = {name: np.concatenate([f[name] for _, f in pending]) for name in names}
        out[np.concatenate([p for p, _ in pending])] = self.session.run(feeds).reshape(-1)
