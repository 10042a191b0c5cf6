"""Micro-batching and ONNX Runtime tuning: rows of concurrent callers share one run, each
caller gets its own rows back, failures reach every caller of the batch."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from inference_server.batching import BatchingSession, MicroBatcher
from recsys.artifact import read_manifest
from recsys.errors import FailedPrecondition, Unavailable
from recsys.onnx_session import ModelSession, SessionTuning, threads_for


def call_concurrently(fn, inputs):
    results = [None] * len(inputs)
    errors = [None] * len(inputs)
    barrier = threading.Barrier(len(inputs))

    def worker(i):
        barrier.wait()
        try:
            results[i] = fn(inputs[i])
        except Exception as exc:  # noqa: BLE001 - checked by the test
            errors[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    return results, errors


def test_concurrent_rows_are_batched_and_each_caller_gets_its_own():
    sizes = []

    def run(x):
        sizes.append(len(x))
        time.sleep(0.02)  # slow enough that the other callers queue up meanwhile
        return x * 10

    batcher = MicroBatcher(run, max_batch=8, max_wait_us=2000)
    rows = [np.full((1, 3), i, dtype=np.int64) for i in range(12)]
    results, errors = call_concurrently(batcher, rows)
    batcher.close()
    assert errors == [None] * 12
    for i, out in enumerate(results):
        assert out.tolist() == [[10 * i] * 3]
    assert sum(sizes) == 12 and max(sizes) <= 8
    assert len(sizes) < 12  # some rows shared a run
    assert batcher.batches == len(sizes) and batcher.batch_rows == 12


def test_a_failing_run_fails_every_caller_of_that_batch_and_the_batcher_keeps_going():
    calls = {"n": 0}

    def run(x):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("boom")
        return x

    batcher = MicroBatcher(run, max_batch=4)
    with pytest.raises(ValueError, match="boom"):
        batcher(np.zeros((1, 2)))
    assert batcher(np.ones((1, 2))).tolist() == [[1.0, 1.0]]
    batcher.close()
    with pytest.raises(Unavailable):
        batcher(np.ones((1, 2)))


def test_bad_settings_are_refused():
    with pytest.raises(FailedPrecondition):
        MicroBatcher(lambda x: x, max_batch=0)
    with pytest.raises(FailedPrecondition):
        MicroBatcher(lambda x: x, max_wait_us=-1)
    with pytest.raises(FailedPrecondition, match="graph optimisation"):
        SessionTuning(graph_opt="fastest").options()


def test_threads_are_sized_against_concurrent_runs():
    assert threads_for(1, cores=8) == 8
    assert threads_for(8, cores=8) == 1
    assert threads_for(32, cores=2) == 1
    assert threads_for(2, cores=16) == 8


@pytest.mark.parametrize(
    "tuning",
    [
        SessionTuning(),
        SessionTuning(graph_opt="basic", intra_threads=2, arena=False),
        SessionTuning(graph_opt="disabled", parallel=True, inter_threads=2),
    ],
)
def test_batched_session_matches_the_plain_one_under_every_tuning(trained_artifact, tuning):
    manifest = read_manifest(trained_artifact)
    plain = ModelSession(trained_artifact, manifest)
    tuned = BatchingSession(ModelSession(trained_artifact, manifest, tuning=tuning), max_batch=4)
    tuned.warm_up()
    rng = np.random.default_rng(0)
    windows = [rng.integers(1, manifest.num_items, (1, manifest.max_history)) for _ in range(9)]
    results, errors = call_concurrently(tuned.scores, windows)
    tuned.close()
    assert errors == [None] * 9
    for window, out in zip(windows, results):
        np.testing.assert_allclose(out, plain.scores(window), atol=1e-5)
    assert tuned.num_items == manifest.num_items  # everything else is the inner session's
