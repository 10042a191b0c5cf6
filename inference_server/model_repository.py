"""The hot swap of the model a server is serving, from a versioned model repository
(inference_server/repository.py).

`ModelManager` holds what a server serves (`current`, read once per request, so a swap never
splits a request between two models) and changes it only after the new version passed every
check beside the old one:

1. it loads: checksums of its files, ONNX Runtime session on the server's device, item index
   against the manifest, warm-up run with the output shape the manifest states;
2. the feature service serves every raw feature it reads, with the kind it reads
   (`Manifest.needs` against the service's `FeatureContract`; when the feature service cannot
   be asked, only a version needing nothing the served version does not need is accepted);
3. output sanity on a sample: scores for up to `SAMPLE_USERS` histories from the artifact (or
   for a block of candidates, for feature-based rankers) are finite and not all equal.

A version that fails is rejected with one log line (ERROR) naming the reason, the old version
keeps serving, and the watcher does not try it again (one that failed only because the feature
service could not be asked is tried again on the next round). Version policy: `latest` follows
the newest version as it appears (`poll`, run every `watch_interval_s` by `start_watch`);
`pinned` serves one version until told otherwise. `load_version(n)` pins version n and
`load_version(None)` returns to `latest`; `rollback()` pins the version served before the
current one. Versions already rejected are skipped by `latest` and retried only when asked
for by number. Without a repository (a plain `--artifact` directory) the manager serves that
directory and has no versions to swap to. A repository without any version of the model yet
is waited on: `serving` is False (requests get UNAVAILABLE, health says NOT_SERVING) until the
watcher loads the first version that passes its checks.

Rollouts (inference_server/rollout.py): `start_rollout` loads a version through the same checks
as a *candidate* beside `current`, which a canary fraction of users gets (or which scores in the
background: shadow); `promote_rollout` makes it `current`, `abort_rollout` drops it. A rollout
that crosses its limits is rolled back on its own: the version is rejected with the reason (one
ERROR line), as a version failing a check is. With `auto_rollout`, `poll` rolls a new version
out instead of swapping to it, and `tick` (every second on the watch thread) promotes it once
healthy for its time. Changing the served version otherwise (`load_version`, `rollback`) ends
a running rollout first. Requests go through `recommend` / `score`, which name the version
that answered.

Several processes on one port each hold a manager and watch the repository themselves, so a
published version reaches them all. An operator's call (`load_version`, `rollback`, and
starting, promoting or aborting a rollout) would change one process only: a manager built with
`operator_refusal` refuses them with `FailedPrecondition` carrying that message. Rollouts the
watcher starts (`auto_rollout`) run in every process, over the same users (the canary salt
names the model and version).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from inference_server.config import DEFAULT_FRACTION, AutoRollout, RolloutLimits
from inference_server.feature_client import FeatureClient, UserView
from inference_server.pipeline import Recommendation, Recommender
from inference_server.repository import ModelRepository, ServedModel
from inference_server.rollout import CANARY, PROMOTED, ROLLED_BACK, Rollout, check_settings
from recsys.artifact import HISTORIES, read_jsonl
from recsys.errors import FailedPrecondition, InvalidArgument, NotFound, RecsysError, Unavailable
from recsys.schema import FIRST_TOKEN

__all__ = ["POLICIES", "SAMPLE_USERS", "ModelManager"]

log = logging.getLogger(__name__)

POLICIES = ("latest", "pinned")
SAMPLE_USERS = 16


class ModelManager:
    """Serves one model, swapping versions after checks (see the module docstring).

    `build(path)` opens an artifact directory as a warmed-up `Recommender` (raising on any
    problem); `features` is the feature client every version shares. A swapped-out version's
    sessions are closed `retire_after_s` seconds after the swap (calls are over by then: each is
    bounded by the server's timeouts).
    """

    def __init__(
        self,
        build: Callable[[Path], Recommender],
        features: FeatureClient,
        *,
        artifact_dir: str | Path | None = None,
        repository: ModelRepository | None = None,
        model: str | None = None,
        version: int | None = None,
        on_change: Callable[[ServedModel], None] | None = None,
        on_reject: Callable[[int, str], None] | None = None,
        retire_after_s: float = 30.0,
        auto_rollout: AutoRollout | None = None,
        operator_refusal: str | None = None,
    ) -> None:
        if (artifact_dir is None) == (repository is None):
            raise ValueError("give an artifact directory or a repository, not both")
        if repository is not None and not model:
            raise ValueError("a repository needs a model name")
        self.build = build
        self.features = features
        self.repository = repository
        self.model = model
        self.policy = "latest" if version is None else "pinned"
        self.rejected: dict[int, str] = {}
        self.history: list[int] = []  # versions served before the current one, oldest first
        self.on_change = on_change
        self.on_reject = on_reject
        self.retire_after_s = retire_after_s
        self.auto_rollout = auto_rollout
        self.operator_refusal = operator_refusal  # why operator calls are refused; None: allowed
        self.rollout: Rollout | None = None  # the running rollout, or the last one (its outcome)
        self._lock = threading.RLock()  # one change of version at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if repository is None:
            path = Path(artifact_dir)
            recommender = build(path)
            self.current = ServedModel(recommender, path, None, recommender.model_version)
        else:
            # Pinned: that version or nothing. Latest: the newest version that passes its checks.
            choices = [version] if version is not None else repository.versions(model)[::-1]
            if not choices:  # the first version is yet to be published: wait for it (NOT_SERVING)
                log.warning("model repository %s has no versions of model %r yet: waiting", repository.root, model)
                self.current = ServedModel(None, repository.root / model, None, "")
            if version is not None and version not in repository.versions(model):
                raise NotFound(f"model {model!r} has no version {version} in {repository.root}")
            for i, chosen in enumerate(choices if choices else ()):
                try:
                    self.current = self._load(chosen, first=True)
                    break
                except FailedPrecondition:
                    if i == len(choices) - 1:
                        raise
        if on_change is not None and self.serving:
            on_change(self.current)

    @property
    def serving(self) -> bool:
        """Whether a version serves (False while an empty repository waits for its first)."""
        return self.current.recommender is not None

    def _need_model(self) -> None:
        if not self.serving:
            raise Unavailable(
                f"model {self.model!r} has no version that passed its checks yet (repository {self.repository.root})"
            )

    # -- serving -------------------------------------------------------------------------

    def recommend(
        self, user_id: str, k: int, exclude_seen: bool, explain: bool = False, *, history=(), timeout_s=None
    ) -> tuple[Recommendation, ServedModel]:
        """`Recommender.recommend` of the version that answers this user, and that version."""
        self._need_model()
        served, rollout = self.current, self.rollout
        if rollout is not None and rollout.running:
            return rollout.recommend(served, user_id, k, exclude_seen, explain, history=history, timeout_s=timeout_s)
        rec = served.recommender.recommend(user_id, k, exclude_seen, explain, history=history, timeout_s=timeout_s)
        return rec, served

    def score(
        self, user_id: str, item_ids: list[str], *, timeout_s=None
    ) -> tuple[list[float], str, list[str], ServedModel]:
        """`Recommender.score_all` of the version that answers this user, and that version."""
        self._need_model()
        served, rollout = self.current, self.rollout
        if rollout is not None and rollout.running:
            return rollout.score(served, user_id, item_ids, timeout_s=timeout_s)
        return (*served.recommender.score_all(user_id, item_ids, timeout_s=timeout_s), served)

    # -- changing versions ---------------------------------------------------------------

    def poll(self) -> ServedModel | None:
        """Under `latest`: swaps to (with `auto_rollout`: rolls out) the newest version not yet
        rejected if it is neither served nor rolling out already (a newer one ends a running
        rollout); returns the new model, or None when nothing changed (or it was rejected)."""
        if self.repository is None:
            return None
        with self._lock:  # an admin call pinning a version meanwhile waits, and then wins
            if self.policy != "latest":
                return None
            candidates = [v for v in self.repository.versions(self.model) if v not in self.rejected]
            running = self.rollout.candidate.version if self.rollout and self.rollout.running else None
            if not candidates or candidates[-1] in (self.current.version, running):
                return None
            try:
                if self.auto_rollout is None or not self.serving:  # no stable version to canary beside
                    served = self._swap(candidates[-1])
                    self._end_rollout(f"superseded by version {served.version}")
                    return served
                auto = self.auto_rollout
                self._start_rollout(candidates[-1], auto.mode, auto.fraction, None, auto.promote_after_s)
            except RecsysError:
                pass
            return None

    def start_rollout(
        self,
        version: int | None,
        mode: str = CANARY,
        fraction: float | None = None,
        *,
        limits: dict | None = None,
        promote_after_s: float | None = None,
    ) -> Rollout:
        """Loads and checks `version` (None: the newest not rejected) as the candidate of a
        rollout (a running one for an older version is ended: superseded). Limits: the
        artifact's (manifest `training["rollout"]`) with `limits` over them. Raises like
        `load_version`; `FailedPrecondition` when it is served already."""
        self._operator_call()
        return self._start_rollout(version, mode, fraction, limits, promote_after_s)

    def _start_rollout(
        self,
        version: int | None,
        mode: str,
        fraction: float | None,
        limits: dict | None,
        promote_after_s: float | None,
    ) -> Rollout:
        self._need_repository()
        if not self.serving:
            raise FailedPrecondition(f"model {self.model!r} serves no version yet: load one first, then roll out")
        fraction = DEFAULT_FRACTION.get(mode, 1.0) if fraction is None else fraction
        check_settings(mode, fraction, promote_after_s)
        with self._lock:
            versions = self.repository.versions(self.model)
            if version is None:
                fresh = [v for v in versions if v not in self.rejected and v != self.current.version]
                if not fresh:
                    raise FailedPrecondition(f"model {self.model!r} has no version to roll out")
                version = fresh[-1]
            if version not in versions:
                raise NotFound(f"model {self.model!r} has no version {version} in {self.repository.root}")
            if version == self.current.version:
                raise FailedPrecondition(f"model {self.model!r} version {version} is the one serving")
            running = self.rollout if self.rollout is not None and self.rollout.running else None
            if running is not None and running.candidate.version >= version:
                raise FailedPrecondition(
                    f"a rollout of version {running.candidate.version} is running: promote or abort it first"
                )
            self.rejected.pop(version, None)
            candidate = self._load(version, first=False)
            rollout = Rollout(
                candidate,
                mode,
                fraction,
                RolloutLimits.of_manifest(candidate.recommender.manifest.training).merged(limits),
                on_fail=self._rolled_back,
                salt=f"{self.model}/{version}",  # the same users on every replica, until the next rollout
                promote_after_s=promote_after_s,
            )
            if running is not None:
                self._end_rollout(f"superseded by version {version}")
            self.rollout = rollout
            log.info(
                "model %s: rolling out version %d (%s) as %s to %.1f%% of users beside %s",
                self.model, version, candidate.label, mode, 100 * rollout.fraction, self.current.label,
            )  # fmt: skip
            return rollout

    def promote_rollout(self, reason: str = "promoted by an operator") -> ServedModel:
        """Serves the running rollout's candidate; `FailedPrecondition` when none runs."""
        self._operator_call()
        return self._promote_rollout(reason)

    def _promote_rollout(self, reason: str) -> ServedModel:
        with self._lock:
            rollout = self._running_rollout()
            if not rollout.finish(PROMOTED, reason):
                raise FailedPrecondition(f"the rollout of version {rollout.candidate.version} ended: {rollout.reason}")
            log.info("model %s: version %d promoted (%s)", self.model, rollout.candidate.version, reason)
            return self._serve(rollout.candidate)

    def abort_rollout(self, reason: str = "") -> Rollout:
        """Drops the running rollout's candidate and rejects its version; the stable one stays."""
        self._operator_call()
        with self._lock:
            rollout = self._running_rollout()
            reason = reason or "aborted by an operator"
            if rollout.finish(ROLLED_BACK, reason):
                self._rolled_back(rollout, reason, automatic=False)
            return rollout

    def tick(self) -> None:
        """Promotes a running rollout that is ready (`Rollout.ready_to_promote`)."""
        rollout = self.rollout
        if rollout is not None and rollout.ready_to_promote():
            with contextlib.suppress(FailedPrecondition):  # it ended meanwhile
                self._promote_rollout(f"healthy for {rollout.promote_after_s:g} s")

    def load_version(self, version: int | None) -> ServedModel:
        """Pins `version` (or, for None, follows `latest` again) and serves it now. Raises
        `NotFound` for a version the repository lacks and `FailedPrecondition` when it fails a
        check (the served version stays)."""
        self._operator_call()
        self._need_repository()
        if version is not None and version < 1:
            raise InvalidArgument(f"model versions are positive integers, got {version}")
        with self._lock:
            return self._load_version(version)

    def _load_version(self, version: int | None) -> ServedModel:
        if version is None:  # the newest version that passes, as the watcher would pick it
            self._end_rollout("ended by following the newest version")
            self.policy = "latest"
            for candidate in reversed(self.repository.versions(self.model)):
                if candidate == self.current.version:
                    return self.current
                if candidate not in self.rejected:
                    try:
                        return self._swap(candidate)
                    except FailedPrecondition:
                        continue
            return self.current
        if version not in self.repository.versions(self.model):
            raise NotFound(f"model {self.model!r} has no version {version} in {self.repository.root}")
        self._end_rollout(f"ended by loading version {version}")
        self.rejected.pop(version, None)
        served = self.current if version == self.current.version else self._swap(version)
        self.policy = "pinned"
        return served

    def rollback(self, version: int | None = None) -> ServedModel:
        """Pins the version served before the current one (or `version`) and serves it."""
        self._operator_call()
        self._need_repository()
        with self._lock:
            if version is None:
                previous = [v for v in self.history if v != self.current.version]
                if not previous:
                    raise FailedPrecondition(
                        f"no earlier version of {self.model!r} was served: nothing to roll back to"
                    )
                version = previous[-1]
            return self.load_version(version)

    def status(self) -> dict:
        versions = self.repository.versions(self.model) if self.repository is not None else []
        return {
            "model": self.model or "",
            "policy": self.policy if self.repository is not None else "artifact",
            "serving_version": self.current.version or 0,
            "label": self.current.label,
            "path": str(self.current.path),
            "versions": versions,
            "rejected": dict(self.rejected),
            "rollout": self.rollout.status() if self.rollout is not None else None,
        }

    # -- watching ------------------------------------------------------------------------

    def start_watch(self, interval_s: float) -> None:
        """On a daemon thread until `stop()`: `tick` every second (at most), and `poll` the
        repository every `interval_s` seconds (never for 0)."""
        if self.repository is None or self._thread is not None:
            return
        step = min(interval_s, 1.0) if interval_s > 0 else 1.0

        def run() -> None:
            next_poll = time.monotonic() + interval_s
            while not self._stop.wait(step):
                try:
                    self.tick()
                    if interval_s > 0 and time.monotonic() >= next_poll:
                        next_poll = time.monotonic() + interval_s
                        self.poll()
                except Exception:  # keep watching whatever one round hit
                    log.exception("model repository watch round failed")

        self._thread = threading.Thread(target=run, name="model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.rollout is not None:
            self.rollout.close()

    # -- internals -----------------------------------------------------------------------

    def _operator_call(self) -> None:
        if self.operator_refusal is not None:
            raise FailedPrecondition(self.operator_refusal)

    def _need_repository(self) -> None:
        if self.repository is None:
            raise FailedPrecondition(
                "this server serves a plain artifact directory, not a model repository "
                "(start it with --repo and --model to change versions)"
            )

    def _swap(self, version: int) -> ServedModel:
        with self._lock:
            if version == self.current.version:
                return self.current
            return self._serve(self._load(version, first=False))

    def _serve(self, served: ServedModel) -> ServedModel:
        old = self.current
        self.current = served  # one reference assignment: requests see the old or the new model
        if old.version is not None:
            self.history.append(old.version)
        was = old.label or "nothing"
        log.info("model %s: now serving version %d (%s), was %s", self.model, served.version, served.label, was)
        if self.on_change is not None:
            self.on_change(served)
        if old.recommender is not None:
            _retire(old.recommender, self.retire_after_s)
        return served

    def _running_rollout(self) -> Rollout:
        rollout = self.rollout
        if rollout is None or not rollout.running:
            raise FailedPrecondition(f"no rollout of model {self.model!r} is running")
        return rollout

    def _end_rollout(self, reason: str) -> None:
        """Ends a running rollout without rejecting its version (an operator took over)."""
        rollout = self.rollout
        if rollout is not None and rollout.finish(ROLLED_BACK, reason):
            log.warning("model %s: rollout of version %d %s", self.model, rollout.candidate.version, reason)
            _retire(rollout.candidate.recommender, self.retire_after_s)

    def _rolled_back(self, rollout: Rollout, reason: str, *, automatic: bool = True) -> None:
        """The candidate is dropped: its version is rejected (`poll` skips it) and retired."""
        version = rollout.candidate.version
        self.rejected[version] = f"rolled back: {reason}"
        still = f"still serving {self.current.label}"
        level = logging.ERROR if automatic else logging.WARNING
        log.log(level, "model %s version %d rolled back: %s; %s", self.model, version, reason, still)
        if self.on_reject is not None:
            self.on_reject(version, self.rejected[version])
        _retire(rollout.candidate.recommender, self.retire_after_s)

    def _load(self, version: int, *, first: bool) -> ServedModel:
        path = self.repository.path(self.model, version)
        try:
            recommender = self.build(path)
            if not first:  # at startup the health watch reports a mismatch (NOT_SERVING) instead
                self._check_schema(recommender)
            _check_outputs(recommender, path)
        except Unavailable as exc:
            log.warning("model %s version %d not loaded yet: %s", self.model, version, exc)
            raise FailedPrecondition(f"model {self.model!r} version {version} not loaded: {exc}") from None
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            self.rejected[version] = reason
            still = "" if first or not self.serving else f"; still serving {self.current.label}"
            log.error("model %s version %d rejected: %s%s", self.model, version, reason, still)
            if self.on_reject is not None:
                self.on_reject(version, reason)
            raise FailedPrecondition(f"model {self.model!r} version {version} rejected: {reason}") from None
        return ServedModel(recommender, path, version, f"{self.model}/{version}:{recommender.model_version}")

    def _check_schema(self, recommender: Recommender) -> None:
        needs = recommender.manifest.needs
        try:
            served = self.features.contract()
        except Unavailable:
            if self.serving and not self.current.recommender.manifest.needs.problems(needs):
                return  # the health watch keeps asking; requests check every answer's contract too
            raise
        problems = served.problems(needs)
        if problems:  # not a fault of the version: tried again once the store serves what it reads
            raise Unavailable(
                f"the feature service at {self.features.target} cannot feed it yet: {'; '.join(problems)} "
                "(load its artifact into the feature store: recsys features load --artifact DIR --store URL)"
            )


def _retire(recommender: Recommender, after_s: float) -> None:
    """Closes a swapped-out model's sessions once calls that read it have surely finished
    (a micro-batching session holds a thread, and with it the model, until closed)."""
    candidates = (recommender.session, getattr(getattr(recommender, "ann", None), "encoder", None))
    sessions = list({id(s): s for s in candidates if hasattr(s, "close")}.values())
    if sessions:
        timer = threading.Timer(after_s, lambda: [s.close() for s in sessions])
        timer.daemon = True
        timer.start()


def _check_outputs(recommender: Recommender, path: Path) -> None:
    """Scores on a small sample are finite and not all equal (see the module docstring)."""
    if recommender.inputs is None:
        users = [
            UserView(
                str(row.get("user_id", "")),
                True,
                tuple(row.get("item_ids", ())),
                history_events=tuple(str(kind) for kind in row.get("events", ())),
            )
            for row in itertools.islice(read_jsonl(path / HISTORIES), SAMPLE_USERS)
        ]
        users = [u for u in users if len(recommender._seen(u))] or [
            UserView("", True, (recommender.index.item_ids[0],))
        ]
        ann = getattr(recommender, "ann", None)
        if ann is not None:  # the index answers Recommend: check what it gives
            scores = np.stack([ann.top_k(recommender._window(u), 10, None)[1] for u in users])
        else:
            scores = np.stack([recommender._next_item_scores(u) for u in users])
    else:
        n = min(recommender.manifest.num_items, 64)
        tokens = np.arange(FIRST_TOKEN, FIRST_TOKEN + n, dtype=np.int64)
        scores = recommender.session.run(recommender.inputs.feeds({}, np.zeros(0, dtype=np.int64), tokens))
        if scores.shape != (n,):
            raise FailedPrecondition(f"output shape {scores.shape} != ({n},) for {n} candidates")
    if not np.isfinite(scores).all():
        raise FailedPrecondition("the model gives non-finite scores (NaN or inf) on sample inputs")
    if scores.size > 1 and float(scores.max() - scores.min()) == 0.0:
        raise FailedPrecondition("the model gives every item the same score on sample inputs")
