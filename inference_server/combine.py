"""Combining: concurrent calls of one batched function, gathered without a dispatcher thread.

`Combiner(run)` turns `run(list of items) -> list of results` into `call(item) -> result` for
many threads at once (the gRPC server's workers). A caller that finds no run in progress runs
at once, on its own thread, alone: an idle server pays no hand-off and no wait. Callers that
arrive while a run is in progress queue up. When a run
ends, the thread that made it hands the queue over to the first queued caller, which wakes and
runs up to `max_batch` queued items as one batch on its own thread, then hands over in turn.
So a loaded server makes one feature fetch or one model run per batch of requests instead of
one per request, and nobody ever waits for more than the run in front of it.

Results: `run` returns one result per item, in order. An exception raised by `run` is raised
in every caller of that batch; a result that is itself an exception is raised in its caller
only (so `run` can fail one item of a batch without failing the others).

Deadlines: `call(item, timeout_s)` waits at most `timeout_s` for its result and then raises
`TimeoutError`; a queued caller that gives up is taken off the queue, so nothing runs on its
behalf after it has gone.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["Combiner"]

T = TypeVar("T")
R = TypeVar("R")


class _Pending:
    """One caller's item. `state` changes under the Combiner's lock only; `wake`, made only for a
    caller that queues, is a plain lock held from the start and released once (the cheapest
    wake-up CPython has)."""

    __slots__ = ("error", "item", "result", "state", "wake")

    def __init__(self, item):
        self.item = item
        self.wake: threading.Lock | None = None
        self.state = _QUEUED
        self.result = None
        self.error: BaseException | None = None


_QUEUED, _TAKEN, _LEAD, _DONE, _GONE = range(5)  # queued; in a running batch; run the queue; answered; gave up


class Combiner(Generic[T, R]):
    """`call(item) -> run([... item ...])[its index]`, batched across concurrent callers."""

    def __init__(self, run: Callable[[list[T]], Sequence[R]], *, max_batch: int = 64):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._run = run
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: deque[_Pending] = deque()
        self._running = False  # a run is in progress (its caller, or its successor, holds the lead)
        self.runs = 0  # runs made, and the items they held: items / runs is the mean batch
        self.items = 0

    def call(self, item: T, timeout_s: float | None = None) -> R:
        me = _Pending(item)
        with self._lock:
            if not self._running:
                self._running = True
                me.state = _LEAD
            else:
                me.wake = threading.Lock()
                me.wake.acquire()
                self._queue.append(me)
        if me.state != _LEAD:
            woken = me.wake.acquire(timeout=-1 if timeout_s is None else max(0.0, timeout_s))
            if not woken:
                with self._lock:
                    if me.state == _QUEUED:
                        self._queue.remove(me)  # nothing will run for us
                    if me.state in (_QUEUED, _TAKEN):  # a running batch's answer for us is dropped
                        me.state = _GONE
                        raise TimeoutError(f"no result within {timeout_s:.3f} s")
                me.wake.acquire()  # handed the lead or answered just now: the release is on its way
            if me.state == _DONE:
                return self._outcome(me)
        self._lead(me)
        return self._outcome(me)

    def _lead(self, me: _Pending) -> None:
        """Run a batch with `me` first, then hand the queue to the next caller or leave."""
        with self._lock:
            batch = [me]
            while self._queue and len(batch) < self.max_batch:
                batch.append(self._queue.popleft())
            for p in batch:
                p.state = _TAKEN
        try:
            results = self._run([p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batched run returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
            for p in batch:
                p.error = exc
        else:
            for p, result in zip(batch, results):
                if isinstance(result, BaseException):
                    p.error = result
                else:
                    p.result = result
        with self._lock:
            self.runs += 1
            self.items += len(batch)
            successor = self._queue.popleft() if self._queue else None
            if successor is not None:
                successor.state = _LEAD  # the run goes on under its lead
            else:
                self._running = False
            answered = [p for p in batch if p.state == _TAKEN]
            for p in answered:
                p.state = _DONE
        for p in answered:
            if p is not me:
                p.wake.release()
        if successor is not None:
            successor.wake.release()

    @staticmethod
    def _outcome(p: _Pending) -> Any:
        if p.error is not None:
            raise p.error
        return p.result
