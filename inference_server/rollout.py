"""A rollout: a candidate version served beside the stable one, watched, then promoted or rolled back.

Modes:

- `canary`: the candidate answers the users `in_canary` picks (a `fraction` of them, the same
  ones on every request, replica and restart: the pick hashes the user id with a salt fixed per
  rollout); everyone else gets the stable version. The stable version re-answers a canary
  request in the background, so the two can be compared.
- `shadow`: the stable version answers everyone; for the picked users (by default all) the
  candidate answers the same request in the background and is compared.

Background work never touches the client's request: it is queued after the answer is computed,
on `workers` daemon threads with a queue of `queue_size` jobs; a job that finds the queue full
is dropped and counted. Every exception in it is caught and counted.

Every candidate answer is timed and checked: an exception, or scores that are non-finite, all
equal (more than one distinct item) or absent, is a failure. A failing canary answer is never
sent: the stable version answers that request instead. Client errors (`InvalidArgument`) and a
feature service that is down (`Unavailable`) are not the candidate's fault and do not count.
Comparisons report the top-10 overlap (|A ∩ B| / n over the first n = min(10, len(stable))
items) and the score drift (mean |stable score - candidate score| over the stable's top items,
or over a Score request's items); answers from popularity are not compared.

After every candidate answer the limits (`RolloutLimits`) are evaluated; the first one crossed
rolls the candidate back (`on_fail(rollout, reason)`, once): `max_consecutive_failures` at any
time, the others once `min_requests` answers are in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from inference_server.config import CANARY, SHADOW, RolloutLimits
from inference_server.pipeline import CAUSE_NON_FINITE, SOURCE_MODEL, SOURCE_REQUEST_HISTORY, Recommendation
from recsys.errors import InvalidArgument, Unavailable

if TYPE_CHECKING:
    from inference_server.repository import ServedModel

__all__ = [
    "MODES",
    "PROMOTED",
    "ROLLED_BACK",
    "RUNNING",
    "Rollout",
    "RolloutCollector",
    "answer_problem",
    "check_settings",
    "in_canary",
]

log = logging.getLogger(__name__)

MODES = (CANARY, SHADOW)
RUNNING, PROMOTED, ROLLED_BACK = "running", "promoted", "rolled_back"
COMPARE_TOP = 10
LATENCY_WINDOW = 1000  # the latest candidate answers the p99 is taken over
_MODEL_SOURCES = (SOURCE_MODEL, SOURCE_REQUEST_HISTORY)
_NOT_ITS_FAULT = (InvalidArgument, Unavailable)


def check_settings(mode: str, fraction: float, promote_after_s: float | None) -> None:
    """`InvalidArgument` for a mode, fraction or promotion delay a rollout cannot have."""
    if mode not in MODES:
        raise InvalidArgument(f"rollout mode {mode!r}: use one of {', '.join(MODES)}")
    if not 0 < fraction <= 1:
        raise InvalidArgument(f"rollout fraction {fraction}: use a number in (0, 1]")
    if promote_after_s is not None and not promote_after_s >= 0:
        raise InvalidArgument(f"promote_after_s {promote_after_s}: use seconds >= 0")


def in_canary(user_id: str, fraction: float, salt: str = "") -> bool:
    """True for the `fraction` of user ids whose salted sha256 falls in the first part of the
    hash space: the first 8 bytes as an integer / 2**64 < fraction."""
    digest = hashlib.sha256(f"{salt}{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class _Answers:
    """One version's answers during a rollout: counts and the latest latencies (seconds)."""

    def __init__(self) -> None:
        self.requests = self.errors = self.bad = self.consecutive = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.total_s = 0.0
        self.last_problem = ""

    def summary(self) -> dict[str, Any]:
        timed = len(self.latencies)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "bad_answers": self.bad,
            "mean_ms": 1000 * self.total_s / max(self.requests - self.errors, 1),
            "p99_ms": 1000 * float(np.percentile(self.latencies, 99)) if timed else 0.0,
        }


class _Background:
    """`workers` daemon threads running queued jobs; `submit` drops a job when `size` wait."""

    def __init__(self, workers: int, size: int, name: str) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(size)
        self._closed = False
        for i in range(workers):
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True).start()
        self._workers = workers

    def submit(self, job: Callable[[], None]) -> bool:
        if self._closed:
            return False
        try:
            self._jobs.put_nowait(job)
            return True
        except queue.Full:
            return False

    def close(self) -> None:
        """Stops the workers after their current job; queued jobs are dropped."""
        self._closed = True
        for _ in range(self._workers):
            try:
                self._jobs.put_nowait(None)
            except queue.Full:  # each worker wakes on a queued job, sees `_closed` and leaves
                break

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._closed:
                return
            job()  # jobs catch their own exceptions


class Rollout:
    """One rollout of `candidate` (a `ServedModel`); see the module docstring."""

    def __init__(
        self,
        candidate: ServedModel,
        mode: str,
        fraction: float,
        limits: RolloutLimits,
        *,
        on_fail: Callable[[Rollout, str], None],
        salt: str = "",
        promote_after_s: float | None = None,
        workers: int = 2,
        queue_size: int = 64,
    ) -> None:
        check_settings(mode, fraction, promote_after_s)
        self.candidate = candidate
        self.mode = mode
        self.fraction = fraction
        self.limits = limits
        self.salt = salt
        self.promote_after_s = promote_after_s
        self.on_fail = on_fail
        self.state = RUNNING
        self.reason = ""
        self.started_at = time.time()
        self.ended_at = 0.0
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._cand, self._stable = _Answers(), _Answers()
        self.compared = self.compare_errors = self.dropped = self._drifts = 0
        self._overlap_sum = self._drift_sum = 0.0
        self._background = _Background(workers, queue_size, f"rollout-{candidate.version}")
        # The pipeline answers from popularity when a model run gives non-finite scores, and
        # says so through `on_failure`: noted per thread, so the answer counts as unsound.
        self._failed_run = threading.local()
        reports = getattr(candidate.recommender, "on_failure", None)

        def on_failure(cause: str, *args) -> None:
            if reports is not None:
                reports(cause, *args)
            if cause == CAUSE_NON_FINITE:
                self._failed_run.cause = cause

        candidate.recommender.on_failure = on_failure

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def picks(self, user_id: str) -> bool:
        return in_canary(user_id, self.fraction, self.salt)

    # -- serving ---------------------------------------------------------------------------

    def recommend(
        self,
        stable: ServedModel,
        user_id: str,
        k: int,
        exclude_seen: bool,
        explain: bool = False,
        *,
        history: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> tuple[Recommendation, ServedModel]:
        """The answer and the version that gave it (see the module docstring)."""

        def ask(recommender, background: bool) -> Recommendation:
            if background:  # no explanations, and the feature client's own timeout
                return recommender.recommend(user_id, k, exclude_seen, history=history)
            return recommender.recommend(user_id, k, exclude_seen, explain, history=history, timeout_s=timeout_s)

        return self._route(
            stable,
            user_id,
            ask,
            lambda r: answer_problem(r.scores, r.source),
            lambda a, b: self._compare(user_id, a, b),
        )

    def score(
        self, stable: ServedModel, user_id: str, item_ids: list[str], *, timeout_s: float | None = None
    ) -> tuple[list[float], str, list[str], ServedModel]:
        """`Recommender.score_all`'s answer (scores, source, unknown ids) and the version that
        gave it (see the module docstring)."""
        distinct = len(set(item_ids)) == len(item_ids)

        def ask(recommender, background: bool) -> tuple[list[float], str, list[str]]:
            return recommender.score_all(user_id, item_ids, timeout_s=None if background else timeout_s)

        (scores, source, unknown), served = self._route(
            stable,
            user_id,
            ask,
            lambda r: answer_problem(r[0], r[1], distinct=distinct),
            lambda a, b: self._drift(a[:2], b[:2]),
        )
        return scores, source, unknown, served

    def _route(self, stable: ServedModel, user_id: str, ask, problem_of, compare) -> tuple[Any, ServedModel]:
        """`ask(recommender, background)` of the version that answers `user_id`; the other
        version's answer is then compared in the background: `compare(stable's, candidate's)`."""
        picked = self.running and self.picks(user_id)
        candidate = self.candidate
        if picked and self.mode == CANARY:
            got = self._candidate_answer(lambda: ask(candidate.recommender, False), problem_of)
            if got is not None:
                self._later(lambda: compare(ask(stable.recommender, True), got))
                return got, candidate
        start = time.perf_counter()
        answer = ask(stable.recommender, False)
        self._stable_answered(time.perf_counter() - start)
        if picked and self.mode == SHADOW:

            def shadow() -> None:
                got = self._candidate_answer(lambda: ask(candidate.recommender, True), problem_of)
                if got is not None:
                    compare(answer, got)

            self._later(shadow)
        return answer, stable

    # -- the rollout's course ----------------------------------------------------------------

    def finish(self, state: str, reason: str) -> bool:
        """Ends the rollout (from running only; False when it had ended already)."""
        with self._lock:
            if self.state != RUNNING:
                return False
            self.state, self.reason, self.ended_at = state, reason, time.time()
        self._background.close()
        return True

    def close(self) -> None:
        """Stops the background work (the server is stopping); the state stays."""
        self._background.close()

    def ready_to_promote(self) -> bool:
        """Running, healthy, with `min_requests` answers and `promote_after_s` seconds behind it."""
        after = self.promote_after_s
        if not self.running or after is None or time.monotonic() - self._started < after:
            return False
        with self._lock:
            return self._cand.requests >= self.limits.min_requests and self._verdict() is None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": self.candidate.version or 0,
                "model_version": self.candidate.label,
                "mode": self.mode,
                "fraction": self.fraction,
                "state": self.state,
                "reason": self.reason,
                "candidate": self._cand.summary(),
                "stable": self._stable.summary(),
                "compared": self.compared,
                "overlap": self._overlap_sum / self.compared if self.compared else 0.0,
                "drift": self._drift_sum / self._drifts if self._drifts else 0.0,
                "dropped": self.dropped,
                "compare_errors": self.compare_errors,
                "limits": dataclasses.asdict(self.limits),
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "promote_after_s": self.promote_after_s or 0.0,
            }

    # -- internals ---------------------------------------------------------------------------

    def _candidate_answer(self, call: Callable[[], Any], problem_of: Callable[[Any], str | None]) -> Any:
        """`call()`'s answer when it is sound; None (counted, and evaluated) when it failed."""
        self._failed_run.cause = None
        start = time.perf_counter()
        try:
            answer = call()
        except _NOT_ITS_FAULT:
            return None  # the stable version answers, or raises the same to the client
        except Exception as exc:  # any failure of the candidate: the stable version answers
            log.debug("candidate %s failed", self.candidate.label, exc_info=True)
            self._record(None, f"{type(exc).__name__}: {exc}")
            return None
        failed_run = self._failed_run.cause and "non-finite scores (it answered from popularity)"
        problem = failed_run or problem_of(answer)
        self._record(time.perf_counter() - start, problem)
        return None if problem else answer

    def _record(self, seconds: float | None, problem: str | None) -> None:
        with self._lock:
            c = self._cand
            c.requests += 1
            if seconds is None:
                c.errors += 1
            else:
                c.latencies.append(seconds)
                c.total_s += seconds
                c.bad += problem is not None
            c.consecutive = c.consecutive + 1 if problem else 0
            c.last_problem = problem or c.last_problem
            reason = self._verdict() if self.state == RUNNING else None
        if reason is not None:
            self._fail(reason)

    def _stable_answered(self, seconds: float) -> None:
        with self._lock:
            self._stable.requests += 1
            self._stable.latencies.append(seconds)
            self._stable.total_s += seconds

    def _verdict(self) -> str | None:
        """The first limit crossed, as a reason; None while within them (under the lock)."""
        c, limits = self._cand, self.limits
        last = f" (last: {c.last_problem})" if c.last_problem else ""
        if c.consecutive >= limits.max_consecutive_failures:
            return f"{c.consecutive} failed answers in a row{last}"
        if c.requests < limits.min_requests:
            return None
        rate = (c.errors + c.bad) / c.requests
        if rate > limits.max_error_rate:
            return f"{c.errors + c.bad} of {c.requests} answers failed ({rate:.1%} > {limits.max_error_rate:.1%}){last}"
        p99_ms = 1000 * float(np.percentile(c.latencies, 99)) if c.latencies else 0.0
        stable = self._stable.latencies
        stable_p99_ms = 1000 * float(np.percentile(stable, 99)) if stable else 0.0
        if p99_ms > limits.max_p99_ms and p99_ms > 2 * stable_p99_ms:
            return (
                f"p99 latency {p99_ms:.1f} ms > {limits.max_p99_ms:g} ms "
                f"(and > twice the stable version's {stable_p99_ms:.1f} ms)"
            )
        if self.compared >= limits.min_requests and self._overlap_sum / self.compared < limits.min_overlap:
            overlap = self._overlap_sum / self.compared
            return f"top-{COMPARE_TOP} overlap with the stable version {overlap:.2f} < {limits.min_overlap:g}"
        return None

    def _fail(self, reason: str) -> None:
        if self.finish(ROLLED_BACK, reason):
            self.on_fail(self, reason)

    def _later(self, job: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                job()
            except Exception:  # background work never fails anything but itself
                log.debug("rollout comparison failed", exc_info=True)
                with self._lock:
                    self.compare_errors += 1

        if not self._background.submit(guarded):
            with self._lock:
                self.dropped += 1

    def _compare(self, user_id: str, stable: Recommendation, candidate: Recommendation) -> None:
        """Overlap of the top items, then the candidate's drift on the stable's top items."""
        if stable.source not in _MODEL_SOURCES or candidate.source not in _MODEL_SOURCES or not stable.item_ids:
            return
        n = min(COMPARE_TOP, len(stable.item_ids))
        overlap = len(set(stable.item_ids[:n]) & set(candidate.item_ids[:n])) / n
        with self._lock:
            self.compared += 1
            self._overlap_sum += overlap
            reason = self._verdict() if self.state == RUNNING else None
        if reason is not None:
            self._fail(reason)
            return
        got = self.candidate.recommender.score(user_id, stable.item_ids[:n])
        self._drift((stable.scores[:n], stable.source), got)

    def _drift(self, stable: tuple[Sequence[float], str], candidate: tuple[Sequence[float], str]) -> None:
        if stable[1] not in _MODEL_SOURCES or candidate[1] not in _MODEL_SOURCES or not len(stable[0]):
            return
        a, b = np.asarray(stable[0], dtype=np.float64), np.asarray(candidate[0], dtype=np.float64)
        both = np.isfinite(a) & np.isfinite(b)  # -inf: an item the version does not know
        drift = float(np.mean(np.abs(a[both] - b[both]))) if both.any() else math.nan
        if math.isfinite(drift):
            with self._lock:
                self._drifts += 1
                self._drift_sum += drift


def answer_problem(scores: Sequence[float], source: str, *, distinct: bool = True) -> str | None:
    """Why a model answer is unsound (None when sound): no items, NaN or +inf scores, or one
    score for every item (more than one, all distinct). -inf marks an item the model does not
    know (Score) and is not counted. Answers from popularity pass."""
    if source not in _MODEL_SOURCES:
        return None
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return "an empty answer"
    if np.isnan(values).any() or np.isposinf(values).any():
        return "non-finite scores"
    known = values[np.isfinite(values)]
    if distinct and known.size > 1 and known.max() == known.min():
        return "every item has the same score"
    return None


class RolloutCollector:
    """Prometheus metrics of the running (or last) rollout, read at each scrape:

    recsys_rollout_running                  1 while a rollout runs
    recsys_rollout_fraction                 the share of users it covers
    recsys_rollout_answers_total{side}      answers by the candidate / the stable version
    recsys_rollout_failures_total{kind}     candidate answers that raised / were unsound
    recsys_rollout_p99_seconds{side}        p99 latency of the latest answers
    recsys_rollout_overlap                  mean top-10 overlap of the two versions
    recsys_rollout_drift                    mean absolute score difference
    recsys_rollout_dropped_total            comparisons dropped (background queue full)
    """

    def __init__(self, rollout: Callable[[], Rollout | None]) -> None:
        self.rollout = rollout

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rollout = self.rollout()
        if rollout is None:
            return
        s = rollout.status()
        yield GaugeMetricFamily("recsys_rollout_running", "1 while a rollout runs", value=int(rollout.running))
        yield GaugeMetricFamily("recsys_rollout_fraction", "share of users the rollout covers", value=s["fraction"])
        answers = CounterMetricFamily("recsys_rollout_answers", "answers during the rollout", labels=["side"])
        p99 = GaugeMetricFamily("recsys_rollout_p99_seconds", "p99 latency of the latest answers", labels=["side"])
        for side in ("candidate", "stable"):
            answers.add_metric([side], s[side]["requests"])
            p99.add_metric([side], s[side]["p99_ms"] / 1000)
        failures = CounterMetricFamily("recsys_rollout_failures", "failed candidate answers", labels=["kind"])
        failures.add_metric(["error"], s["candidate"]["errors"])
        failures.add_metric(["bad_answer"], s["candidate"]["bad_answers"])
        yield answers
        yield p99
        yield failures
        yield GaugeMetricFamily("recsys_rollout_overlap", "mean top-10 overlap of the versions", value=s["overlap"])
        yield GaugeMetricFamily("recsys_rollout_drift", "mean absolute score difference", value=s["drift"])
        yield CounterMetricFamily("recsys_rollout_dropped", "comparisons dropped", value=s["dropped"])
