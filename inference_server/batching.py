"""Micro-batching: concurrent single-user model calls gathered into one ONNX Runtime run.

Each gRPC worker thread that needs scores puts its row on a queue and waits; one batching
thread takes the first waiting row, then keeps taking rows until it holds `max_batch` of them
or `max_wait_us` microseconds have passed since the first one, runs the model once on the
stacked rows and hands each caller its own row of the output. With `max_wait_us=0` there is
no batching thread at all (`CombiningBatcher`, inference_server/combine.py): a caller that
finds no run in progress runs its own row at once, and rows that arrive meanwhile are run
together by the first of their callers when it ends; so a lone request pays no hand-off and
no wait, while a loaded server runs one large batch instead of many small ones.

It pays where one run of B rows costs much less than B runs of one row: a large catalogue
(the (B, D) x (D, N) scoring matmul) and CUDA. On a small catalogue on few CPU cores the
thread handoff can cost more than it saves; `python -m benchmarks.load` measures both ways, and the server
turns it on only when asked (`--batch-max`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from itertools import pairwise

import numpy as np

from inference_server.combine import Combiner
from recsys.errors import FailedPrecondition, Unavailable

__all__ = ["BatchingSession", "CombiningBatcher", "MicroBatcher"]

_STOP = object()


class MicroBatcher:
    """`__call__(rows (b, ...)) -> run(stacked rows)[the caller's rows]`, batched across threads.

    `run` maps an (n, ...) array to an output whose first axis has n rows. Rows of different
    callers must share the trailing shape and dtype (fixed-width windows do). An exception in
    `run` is raised in every caller of that batch. Thread-safe; `close()` stops the batching
    thread and fails later calls with `Unavailable`. `on_queue(seconds)`, when set, hears how
    long each caller's rows waited before their run started (metrics).
    """

    on_queue: Callable[[float], None] | None = None

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 32, max_wait_us: int = 0):
        if max_batch < 1:
            raise FailedPrecondition(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_us < 0:
            raise FailedPrecondition(f"max_wait_us must be >= 0, got {max_wait_us}")
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_us / 1e6
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # orders every put before the stop marker
        self.batches = 0  # runs made, and rows they held: batch_rows / batches is the mean batch
        self.batch_rows = 0
        self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._thread.start()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise Unavailable("the model's batching thread has stopped")
            self._queue.put((rows, future, time.perf_counter()))
        return future.result()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            pending = [first]
            size = len(first[0])
            deadline = time.perf_counter() + self.max_wait_s
            stop = False
            while size < self.max_batch:
                try:
                    if self.max_wait_s <= 0:
                        item = self._queue.get_nowait()
                    else:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                pending.append(item)
                size += len(item[0])
            self._execute(pending)
            if stop:
                self._fail_rest()
                return

    def _execute(self, pending: list) -> None:
        try:
            if self.on_queue is not None:
                now = time.perf_counter()
                for _, _, queued in pending:
                    self.on_queue(now - queued)
            stacked = pending[0][0] if len(pending) == 1 else np.concatenate([rows for rows, _, _ in pending])
            out = self._run(stacked)
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
            for _, future, _ in pending:
                future.set_exception(exc)
            return
        self.batches += 1
        self.batch_rows += len(stacked)
        start = 0
        for rows, future, _ in pending:
            future.set_result(out[start : start + len(rows)])
            start += len(rows)

    def _fail_rest(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item[1].set_exception(Unavailable("the model's batching thread has stopped"))


class CombiningBatcher:
    """MicroBatcher's interface with no thread and no wait: rows of concurrent callers are run
    together by one of those callers (inference_server/combine.py). `max_batch` counts calls."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 32):
        if max_batch < 1:
            raise FailedPrecondition(f"max_batch must be >= 1, got {max_batch}")
        self._run = run
        self.max_batch = max_batch
        self._combiner = Combiner(self._run_stacked, max_batch=max_batch)
        self.batch_rows = 0

    @property
    def batches(self) -> int:
        return self._combiner.runs

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self._combiner.call(rows)

    def _run_stacked(self, parts: list[np.ndarray]) -> list[np.ndarray]:
        stacked = parts[0] if len(parts) == 1 else np.concatenate(parts)
        out = self._run(stacked)
        self.batch_rows += len(stacked)
        bounds = np.cumsum([0, *(len(p) for p in parts)])
        return [out[a:b] for a, b in pairwise(bounds)]

    def close(self) -> None:
        pass


class BatchingSession:
    """A ModelSession whose `scores` are batched across concurrent callers (a CombiningBatcher
    with `max_wait_us=0`, else a MicroBatcher); everything else is the session's."""

    def __init__(self, session, *, max_batch: int = 32, max_wait_us: int = 0):
        self.inner = session
        if max_wait_us > 0:
            self.batcher = MicroBatcher(session.scores, max_batch=max_batch, max_wait_us=max_wait_us)
        else:
            self.batcher = CombiningBatcher(session.scores, max_batch=max_batch)

    def scores(self, item_seq: np.ndarray) -> np.ndarray:
        return self.batcher(item_seq)

    def warm_up(self) -> None:
        self.inner.warm_up()
        # Warm the batch shapes too: ORT allocates per shape on first use.
        self.inner.scores(np.zeros((self.batcher.max_batch, self.inner.max_len), dtype=np.int64))

    def close(self) -> None:
        self.batcher.close()

    def __getattr__(self, name):
        return getattr(self.inner, name)
