"""Recommend and Score as plain functions of (user id, arguments) -> results.

The pipeline is model-agnostic: the manifest says what the model computes (`task`) and which
inputs it takes; there are no model-specific branches.

- task "next_item": the user's recent item tokens (source user.history), for a model trained
  on event kinds the kind of each of those events (user.history_events: tokens of the
  manifest's `training.events`, OOV for a kind the model does not know or an event without
  one), and, for models that read them, the user's features (sources user.cat / user.num,
  built by feature_inputs.py as one row); the output scores the whole catalogue.
- task "rank" / "rating": feature-based inputs per (user, candidate) row (see
  feature_inputs.py). Recommend scores candidates proposed by a retrieval stage (another
  Recommender over a next-item model: two-stage serving) or, without one, the whole catalogue.

The user's features are fetched once per request. Servicers adapt protos to these calls;
nothing here sees a gRPC context.

Degradation: when the feature service fails or does not answer within `timeout_s` (the caller
passes what is left of the request's deadline), a Recommender built with `degrade=True` answers
anyway: a next-item model reads the history the request carried (source
SOURCE_REQUEST_HISTORY), and without one, or for feature-based rankers, popularity answers
(SOURCE_FALLBACK). Both sources mean "degraded"; `DEGRADED_SOURCES` lists them. A model run
whose scores are not all finite is a failed run: popularity answers (SOURCE_FALLBACK), and
`on_failure(cause)` hears about it, as it hears about item refreshes that failed (the old item
rows keep serving and the refresh is tried again on the next request).

Catalogue drift: items the model was not trained on (they reached the feature store after it)
are never recommended by it; `Score` gives them `-inf` and names them (`unknown_item_ids`).
Users' histories may hold them: they read as out-of-vocabulary tokens. Every answer of the
feature service is checked against what the model reads (`Manifest.needs`): a store that stops
serving one of those features fails the request with FAILED_PRECONDITION (`SchemaMismatch`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from inference_server.explain import (
    MAX_EXPLAINED,
    Attribution,
    Explanation,
    explain_feature_ranker,
    explain_next_item,
    explain_user_features,
    window_scorer,
)
from inference_server.feature_client import FeatureClient, SchemaMismatch, UserView
from inference_server.feature_inputs import USER_SOURCES, FeatureInputs
from recsys.artifact import SOURCE_USER_HISTORY, SOURCE_USER_HISTORY_EVENTS, ItemIndex, Manifest
from recsys.errors import FailedPrecondition, InvalidArgument, Unavailable
from recsys.onnx_session import ModelSession
from recsys.schema import FIRST_TOKEN, OOV, PAD
from recsys.tracing import span

__all__ = ["MAX_ID_CHARS", "Recommendation", "Recommender"]

log = logging.getLogger(__name__)

MAX_ID_CHARS = 256
SOURCE_MODEL = "model"
SOURCE_POPULARITY = "popularity"
SOURCE_REQUEST_HISTORY = "request_history"  # degraded: the model on the request's own history
SOURCE_FALLBACK = "fallback"  # degraded: popularity, because the feature service failed
DEGRADED_SOURCES = (SOURCE_REQUEST_HISTORY, SOURCE_FALLBACK)
# Why an answer degraded beyond the feature service failing (`Recommender.on_failure`)
CAUSE_NON_FINITE = "non_finite_scores"
CAUSE_ITEM_REFRESH = "item_refresh"
MAX_REQUEST_HISTORY = 1000
FEATURE_TASKS = ("rank", "rating")


@dataclass(frozen=True)
class Recommendation:
    item_ids: list[str]
    scores: list[float]
    titles: list[str]
    source: str  # SOURCE_MODEL or SOURCE_POPULARITY
    # With explain=True and a model answer: per item (the first MAX_EXPLAINED), see explain.py
    because_items: list[list[Attribution]] | None = None
    because_features: list[list[Attribution]] | None = None


class Recommender:
    def __init__(
        self,
        manifest: Manifest,
        index: ItemIndex,
        session: ModelSession,
        features: FeatureClient,
        *,
        max_k: int = 1000,
        max_candidates: int = 10000,
        seen_window: int = 1000,
        retrieval: Recommender | None = None,
        num_candidates: int = 200,
        item_refresh_s: float = 300.0,
        degrade: bool = True,
        ann=None,
        user_index: dict[str, int] | None = None,
    ):
        if len(index.item_ids) != manifest.num_items or index.sha256 != manifest.item_index_sha256:
            raise FailedPrecondition("item_index.json does not match the manifest's item index checksum")
        self.manifest = manifest
        self.index = index
        self.session = session
        self.features = features
        self.max_k = max_k
        self.max_candidates = max_candidates
        # exclude_seen drops items among the user's `seen_window` most recent events.
        self.seen_window = max(seen_window, manifest.max_history)
        self.token = {item: i + FIRST_TOKEN for i, item in enumerate(index.item_ids)}
        # Keys of this model's arrays in `UserView.derived` (per item index, so stages sharing
        # one view never read each other's tokens); built once, not per request.
        self._tokens_key = ("tokens", id(self.token))
        self._seen_key = ("seen", id(self.token))
        # Popularity scores: the fallback for users with nothing the model can read.
        self.popularity = np.asarray(index.popularity, dtype=np.float32)
        self.retrieval = retrieval
        self.num_candidates = num_candidates
        self.inputs: FeatureInputs | None = None
        # next_item models that read user features besides the history (two-tower): feature_inputs.py
        self.user_inputs: FeatureInputs | None = None
        # next_item models that read the kind of each history event: kind -> token, and the input's name
        self.event_token: dict[str, int] | None = None
        self._events_input = ""
        self._events_key = ("events", id(self))
        if manifest.task == "next_item":
            sources = [i.source for i in manifest.inputs]
            if SOURCE_USER_HISTORY not in sources or not set(sources) <= USER_SOURCES:
                raise FailedPrecondition(f"next_item model inputs {sources} are not supported")
            if SOURCE_USER_HISTORY_EVENTS in sources:
                kinds = manifest.training.get("events")
                if not kinds or not isinstance(kinds, list):
                    raise FailedPrecondition(
                        "the model reads user.history_events but its manifest lists no event kinds (training.events)"
                    )
                self.event_token = {str(kind): i + FIRST_TOKEN for i, kind in enumerate(kinds)}
                self._events_input = next(i.name for i in manifest.inputs if i.source == SOURCE_USER_HISTORY_EVENTS)
            if set(sources) - {SOURCE_USER_HISTORY, SOURCE_USER_HISTORY_EVENTS}:
                self.user_inputs = FeatureInputs(manifest, index.item_ids)
        elif manifest.task in FEATURE_TASKS:
            self.inputs = FeatureInputs(manifest, index.item_ids, user_index)
            if retrieval is not None and retrieval.manifest.task != "next_item":
                raise FailedPrecondition("the retrieval stage must be a next_item model")
        else:
            raise FailedPrecondition(f"model task {manifest.task!r} is not supported by this server")
        if retrieval is not None and self.inputs is None:
            raise FailedPrecondition("a retrieval stage only goes in front of a rank or rating model")
        self.item_refresh_s = item_refresh_s
        self.degrade = degrade
        # inference_server.retrieval.Retriever: approximate top-k for next-item models over
        # large catalogues (Recommend); Score stays exact through it.
        self.ann = ann
        self._items_loaded_at = -np.inf
        self._items_lock = threading.Lock()
        self.needs = manifest.needs
        self._compatible_with = ""  # hash of the last feature contract found to serve self.needs
        self.on_failure = None  # on_failure(cause): a failed model run or item refresh (metrics)

    @property
    def model_version(self) -> str:
        if self.retrieval is not None:
            return f"{self.retrieval.model_version}+{self.manifest.model_version}"
        return self.manifest.model_version

    def warm_up(self) -> None:
        if self.ann is not None:
            self.ann.warm_up()
        elif self.user_inputs is not None or self.event_token is not None:
            out = self._next_item_scores(UserView("", False, ()))
            if out.shape != (self.manifest.num_items,):
                raise FailedPrecondition(f"model output shape {out.shape} != ({self.manifest.num_items},) for one user")
        elif self.inputs is None:
            self.session.warm_up()
        else:
            tokens = np.array([FIRST_TOKEN], dtype=np.int64)
            out = self.session.run(self.inputs.feeds({}, np.zeros(0, dtype=np.int64), tokens))
            if out.shape != (1,):
                raise FailedPrecondition(f"model output shape {out.shape} != (1,) for one row")

    def recommend(
        self,
        user_id: str,
        k: int,
        exclude_seen: bool,
        explain: bool = False,
        *,
        history: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> Recommendation:
        _check_user_id(user_id)
        if not 1 <= k <= self.max_k:
            raise InvalidArgument(f"k must be between 1 and {self.max_k}, got {k}")
        if history:
            _check_history(history)
        user, degraded = self._user(user_id, history, timeout_s)
        seen = self._seen(user)
        all_finite = False  # known to hold for `scores` below without a pass over them
        if degraded and (self.inputs is not None or not len(seen)):
            scores, source = self.popularity.copy(), SOURCE_FALLBACK
        elif self._fallback(user, seen):
            scores, source = self.popularity.copy(), SOURCE_POPULARITY
        elif self.inputs is None and self.ann is not None:
            cols, top_scores = self.ann.top_k(self._window(user), k, seen if exclude_seen else None)
            if not np.isfinite(top_scores).all():
                return self._popular(self._failed_run(), SOURCE_FALLBACK, seen if exclude_seen else (), k)
            why = self._explain(user, np.asarray(cols, dtype=np.int64)[:MAX_EXPLAINED]) if explain else None
            return Recommendation(
                [self.index.item_ids[i] for i in cols],
                [float(s) for s in top_scores],
                [self.index.titles[i] for i in cols],
                SOURCE_REQUEST_HISTORY if degraded else SOURCE_MODEL,
                because_items=why.because_items if why else None,
                because_features=why.because_features if why else None,
            )
        elif self.inputs is None:
            scores, source = self._next_item_scores(user), SOURCE_REQUEST_HISTORY if degraded else SOURCE_MODEL
            all_finite = bool(np.isfinite(scores).all())
            if not all_finite:
                scores, source = self._failed_run(), SOURCE_FALLBACK
        else:
            candidates = self._candidates(user, seen if exclude_seen else None)
            scores = np.full(self.manifest.num_items, -np.inf, dtype=np.float32)
            ranked = self._feature_scores(user, candidates)
            if np.isfinite(ranked).all():
                scores[candidates - FIRST_TOKEN] = ranked
                source = SOURCE_MODEL
            else:
                scores, source = self._failed_run(), SOURCE_FALLBACK
        masked = len(seen) if exclude_seen else 0
        if masked:
            scores[seen] = -np.inf
        # A next-item run's scores are all finite: then at least len - masked of them still are,
        # and counting them is only needed when k may exceed that.
        if not (all_finite and k <= len(scores) - masked):
            k = min(k, int(np.isfinite(scores).sum()))
        neg = np.negative(scores)
        top = np.argpartition(neg, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
        top = top[np.argsort(neg[top], kind="stable")]
        explained = explain and source in (SOURCE_MODEL, SOURCE_REQUEST_HISTORY)
        why = self._explain(user, top[:MAX_EXPLAINED]) if explained else None
        cols = top.tolist()
        item_ids, titles = self.index.item_ids, self.index.titles
        return Recommendation(
            item_ids=[item_ids[i] for i in cols],
            scores=scores[top].tolist(),
            titles=[titles[i] for i in cols],
            source=source,
            because_items=why.because_items if why else None,
            because_features=why.because_features if why else None,
        )

    def _popular(self, scores: np.ndarray, source: str, seen, k: int) -> Recommendation:
        """The top `k` of `scores` (popularity), `seen` columns left out."""
        if len(seen):
            scores[seen] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        top = np.argsort(-scores, kind="stable")[:k]
        return Recommendation(
            [self.index.item_ids[i] for i in top],
            [float(scores[i]) for i in top],
            [self.index.titles[i] for i in top],
            source,
        )

    def _explain(self, user: UserView, cols: np.ndarray) -> Explanation:
        """Attributions of the scores of catalogue columns `cols` (see explain.py)."""
        ids, titles = self.index.item_ids, self.index.titles
        if self.inputs is None:
            score, length = window_scorer(
                self.session, self.user_inputs, user.features, self.manifest.max_history, self._events_input
            )
            kinds = self._event_tokens(user) if self.event_token is not None else None
            why = explain_next_item(score, self._tokens(user), length, cols, ids, titles, kinds=kinds)
            if self.user_inputs is not None:  # the model reads user features: attribute them too
                features = explain_user_features(
                    self.session, self.user_inputs, user.features, self._tokens(user), cols, kinds
                )
                why = Explanation(why.because_items, features)
            return why
        return explain_feature_ranker(
            self.session,
            self.inputs,
            user.features,
            self._tokens(user),
            np.asarray(cols, dtype=np.int64) + FIRST_TOKEN,
            ids,
            titles,
            user_id=user.user_id,
        )

    def score(self, user_id: str, item_ids: list[str], *, timeout_s: float | None = None) -> tuple[list[float], str]:
        """Scores in the order of `item_ids` and the source (see `score_all`)."""
        scores, source, _ = self.score_all(user_id, item_ids, timeout_s=timeout_s)
        return scores, source

    def score_all(
        self, user_id: str, item_ids: list[str], *, timeout_s: float | None = None
    ) -> tuple[list[float], str, list[str]]:
        """Scores in the order of `item_ids`, the source, and the ids this model does not know
        (scored -inf: it cannot rank what it never saw)."""
        _check_user_id(user_id)
        if not item_ids:
            raise InvalidArgument("item_ids is empty")
        if len(item_ids) > self.max_candidates:
            raise InvalidArgument(f"{len(item_ids)} item_ids exceeds the maximum of {self.max_candidates}")
        if any(len(i) > MAX_ID_CHARS for i in item_ids):
            raise InvalidArgument(f"item_ids holds an id longer than {MAX_ID_CHARS} characters")
        tokens = np.fromiter(map(self.token.get, item_ids, repeat(-1)), dtype=np.int64, count=len(item_ids))
        known = tokens >= 0
        unknown = [item_ids[j] for j in np.flatnonzero(~known)]
        out = np.full(len(item_ids), -np.inf, dtype=np.float32)
        if not known.any():
            return out.tolist(), SOURCE_POPULARITY, unknown
        tokens = tokens[known]
        user, degraded = self._user(user_id, (), timeout_s)
        if degraded or self._fallback(user, self._seen(user)):
            out[known] = self.popularity[tokens - FIRST_TOKEN]
            return out.tolist(), SOURCE_FALLBACK if degraded else SOURCE_POPULARITY, unknown
        if self.inputs is None and self.ann is not None:
            scores = self.ann.score_items(self._window(user), tokens - FIRST_TOKEN)
        elif self.inputs is None:
            scores = self._next_item_scores(user)[tokens - FIRST_TOKEN]
        else:
            scores = self._feature_scores(user, tokens)
        scores = np.asarray(scores, dtype=np.float32)
        if not np.isfinite(scores).all():
            out[known] = self._failed_run()[tokens - FIRST_TOKEN]
            return out.tolist(), SOURCE_FALLBACK, unknown
        out[known] = scores
        return out.tolist(), SOURCE_MODEL, unknown

    # -- stages -------------------------------------------------------------------------

    def _user(self, user_id: str, history: Sequence[str], timeout_s: float | None) -> tuple[UserView, bool]:
        """The feature service's view of the user, or (with `degrade`, when it fails or is too
        slow) one built from the request's `history`; the flag says which."""
        try:
            user = self.features.get_user(user_id, self.seen_window, timeout_s=timeout_s)
        except Unavailable:
            if not self.degrade:
                raise
            return UserView(user_id, bool(history), tuple(history[-self.seen_window :])), True
        if user.contract_hash != self._compatible_with:
            self._check_contract(user.contract_hash)
        return user, False

    def _check_contract(self, contract_hash: str) -> None:
        """The feature contract an answer was served under holds what this model reads
        (`SchemaMismatch` otherwise); remembered by hash, so asked once per contract change."""
        if not self.needs.user and not self.needs.item:
            self._compatible_with = contract_hash
            return
        problems = self.features.contract_of(contract_hash).problems(self.needs)
        if problems:
            raise SchemaMismatch(self.features.target, problems)
        self._compatible_with = contract_hash

    def _failed_run(self) -> np.ndarray:
        """Popularity scores in place of a model run whose scores were not all finite."""
        if not np.isfinite(self._items_loaded_at) and self.inputs is not None and self.inputs.needs_item_features:
            return self.popularity.copy()  # item features could not be fetched: counted as such
        if self.on_failure is not None:
            self.on_failure(CAUSE_NON_FINITE)
        log.warning("model %s gave non-finite scores: answering from popularity", self.manifest.model_version)
        return self.popularity.copy()

    def _tokens(self, user: UserView) -> np.ndarray:
        """The user's history as item tokens (OOV for items this model does not know); computed
        once per request per item index, however many stages read it. Read-only."""
        derived = user.derived
        tokens = derived.get(self._tokens_key)
        if tokens is None:
            history = user.history
            tokens = np.fromiter(map(self.token.get, history, repeat(OOV)), dtype=np.int64, count=len(history))
            tokens.flags.writeable = False
            derived[self._tokens_key] = tokens
        return tokens

    def _event_tokens(self, user: UserView) -> np.ndarray:
        """The kinds of the user's history events as tokens, aligned with `_tokens`: OOV for a
        kind the model does not know, an event without one, or a history whose kinds are unknown
        (a view built from the request's history). Computed once per request. Read-only."""
        kinds = user.derived.get(self._events_key)
        if kinds is None:
            n = len(user.history)
            if len(user.history_events) == n:
                kinds = np.fromiter(map(self.event_token.get, user.history_events, repeat(OOV)), np.int64, count=n)
            else:
                kinds = np.full(n, OOV, dtype=np.int64)
            kinds.flags.writeable = False
            user.derived[self._events_key] = kinds
        return kinds

    def _seen(self, user: UserView) -> np.ndarray:
        seen = user.derived.get(self._seen_key)
        if seen is None:
            tokens = self._tokens(user)
            seen = tokens[tokens >= FIRST_TOKEN]
            seen -= FIRST_TOKEN
            seen.flags.writeable = False
            user.derived[self._seen_key] = seen
        return seen

    def _fallback(self, user: UserView, seen: np.ndarray) -> bool:
        """Unknown users, and next-item models without one known item to read, get popularity."""
        return not user.found or (self.inputs is None and not len(seen))

    def _window(self, user: UserView) -> np.ndarray:
        """(1, max_history) int64: the user's most recent item tokens, left-padded."""
        return _left_window(self._tokens(user), self.manifest.max_history)

    def _next_item_scores(self, user: UserView) -> np.ndarray:
        if self.user_inputs is not None:
            kinds = self._event_tokens(user) if self.event_token is not None else None
            feeds = self.user_inputs.feeds(
                user.features, self._tokens(user), np.zeros(1, dtype=np.int64), history_events=kinds
            )
            with span("model.run"):
                return self.session.run(feeds)[0].astype(np.float32, copy=True)
        if self.event_token is not None:
            feeds = {
                self.session.input_name: self._window(user),
                self._events_input: _left_window(self._event_tokens(user), self.manifest.max_history),
            }
            with span("model.run"):
                return self.session.run(feeds)[0].astype(np.float32, copy=True)
        with span("model.run"):
            return self.session.scores(self._window(user))[0].astype(np.float32, copy=True)

    def _candidates(self, user: UserView, seen: np.ndarray | None) -> np.ndarray:
        """Item tokens to rank: the retrieval stage's top `num_candidates`, or every item."""
        if self.retrieval is None:
            return np.arange(FIRST_TOKEN, self.manifest.num_items + FIRST_TOKEN, dtype=np.int64)
        ret = self.retrieval
        ret_seen = ret._seen(user)
        scores = ret.popularity.copy() if ret._fallback(user, ret_seen) else ret._next_item_scores(user)
        if seen is not None and len(ret_seen):
            scores[ret_seen] = -np.inf
        n = min(self.num_candidates, int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, n - 1)[:n] if n else np.zeros(0, dtype=np.int64)
        tokens = [self.token.get(ret.index.item_ids[i]) for i in top]
        return np.array([t for t in tokens if t is not None], dtype=np.int64)

    def _feature_scores(self, user: UserView, tokens: np.ndarray) -> np.ndarray:
        """Ranker scores of `tokens`; when item features were never fetched and cannot be now,
        non-finite scores (NaN), which the callers answer from popularity (with `degrade`)."""
        try:
            self._refresh_items()
        except Unavailable:
            if not self.degrade:
                raise
            return np.full(len(tokens), np.nan, dtype=np.float32)
        feeds = self.inputs.feeds(user.features, self._tokens(user), tokens, user.user_id)
        with span("model.run"):
            return self.session.run(feeds).astype(np.float32, copy=False)

    def _refresh_items(self) -> None:
        """Item features are encoded once and re-fetched every `item_refresh_s` seconds."""
        if not self.inputs.needs_item_features or time.monotonic() - self._items_loaded_at < self.item_refresh_s:
            return
        with self._items_lock:
            if time.monotonic() - self._items_loaded_at < self.item_refresh_s:
                return

            def fetch(ids: list[str]):
                found = self.features.get_items(ids)
                return [(i, found.get(i)) for i in ids]

            try:
                self.inputs.load_items(fetch)
            except Unavailable as exc:  # keep the rows we have; ask again on the next request
                if self.on_failure is not None:
                    self.on_failure(CAUSE_ITEM_REFRESH)
                log.warning("item features not refreshed (%s): %s", self.manifest.model_version, exc)
                if np.isfinite(self._items_loaded_at):
                    return
                raise  # never loaded: nothing to score with
            self._items_loaded_at = time.monotonic()


def _left_window(tokens: np.ndarray, length: int) -> np.ndarray:
    """(1, length) int64: the last `length` of `tokens`, left-padded with PAD."""
    window = np.full((1, length), PAD, dtype=np.int64)
    tail = tokens[-length:]
    if len(tail):
        window[0, -len(tail) :] = tail
    return window


def _check_history(history: Sequence[str]) -> None:
    if len(history) > MAX_REQUEST_HISTORY:
        raise InvalidArgument(f"history has {len(history)} items, more than the maximum of {MAX_REQUEST_HISTORY}")
    if any(len(i) > MAX_ID_CHARS for i in history):
        raise InvalidArgument(f"history holds an item id longer than {MAX_ID_CHARS} characters")


def _check_user_id(user_id: str) -> None:
    if not user_id:
        raise InvalidArgument("user_id is empty")
    if len(user_id) > MAX_ID_CHARS:
        raise InvalidArgument(f"user_id is longer than {MAX_ID_CHARS} characters")
