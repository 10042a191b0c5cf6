"""Combining concurrent calls (inference_server/combine.py) and its two users: the feature
client's user look-ups and the model's micro-batches."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from inference_server.batching import BatchingSession, CombiningBatcher
from inference_server.combine import Combiner
from inference_server.feature_client import FeatureClient
from recsys.errors import InvalidArgument, Unavailable
from recsys.v1 import features_pb2, features_pb2_grpc


def _run_together(fn, n: int) -> list:
    """Calls fn(i) from n threads released at once; returns results (or exceptions) by i."""
    out: list = [None] * n
    start = threading.Barrier(n)

    def worker(i):
        start.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - compared by the test
            out[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_a_lone_call_runs_at_once_on_its_own_thread():
    seen = []
    combiner = Combiner(lambda items: (seen.append(threading.get_ident()), [x * 2 for x in items])[1])
    assert combiner.call(21) == 42
    assert seen == [threading.get_ident()] and combiner.runs == 1 and combiner.items == 1


def test_calls_arriving_during_a_run_are_answered_together_in_order():
    gate = threading.Event()
    batches = []

    def run(items):
        batches.append(list(items))
        if len(batches) == 1:
            gate.wait(5)  # hold the first run until the others have queued
        return [x * 10 for x in items]

    combiner = Combiner(run, max_batch=64)
    first = threading.Thread(target=lambda: combiner.call(0))
    first.start()
    while not batches:
        time.sleep(0.001)
    waiting = [None] * 6

    def ask(i):
        waiting[i] = combiner.call(i + 1)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    while len(combiner._queue) < 6:
        time.sleep(0.001)
    gate.set()
    for t in [first, *threads]:
        t.join(5)
    assert waiting == [10, 20, 30, 40, 50, 60]
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4, 5, 6] and len(batches) == 2
    assert combiner.items == 7 and not combiner._running and not combiner._queue


def test_max_batch_splits_the_queue_and_every_caller_gets_its_own_answer():
    combiner = Combiner(lambda items: (time.sleep(0.002), [x + 1 for x in items])[1], max_batch=3)
    out = _run_together(lambda i: combiner.call(i), 20)
    assert out == [i + 1 for i in range(20)]
    assert combiner.items == 20 and not combiner._running


def test_an_error_of_the_run_reaches_its_whole_batch_and_a_per_item_error_only_its_caller():
    def run(items):
        if "boom" in items:
            raise RuntimeError("the run failed")
        return [ValueError(f"bad {x}") if x < 0 else x for x in items]

    combiner = Combiner(run)
    with pytest.raises(RuntimeError, match="the run failed"):
        combiner.call("boom")
    out = _run_together(lambda i: combiner.call(-1 if i == 3 else i), 8)
    assert isinstance(out[3], ValueError) and [o for i, o in enumerate(out) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
    assert not combiner._running


def test_a_queued_caller_gives_up_at_its_deadline_and_nothing_runs_for_it():
    gate = threading.Event()
    ran = []

    def run(items):
        ran.extend(items)
        gate.wait(5)
        return list(items)

    combiner = Combiner(run)
    first = threading.Thread(target=lambda: combiner.call("first"))
    first.start()
    while not ran:
        time.sleep(0.001)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        combiner.call("late", timeout_s=0.05)
    assert time.monotonic() - started < 1.0
    gate.set()
    first.join(5)
    assert ran == ["first"] and not combiner._queue and not combiner._running
    assert combiner.call("again") == "again"  # the combiner still works


def test_combining_batcher_stacks_rows_and_splits_the_output():
    calls = []

    def run(rows):
        calls.append(len(rows))
        time.sleep(0.002)
        return rows * 2

    batcher = CombiningBatcher(run, max_batch=16)
    out = _run_together(lambda i: batcher(np.full((1, 3), i)), 12)
    for i, rows in enumerate(out):
        np.testing.assert_array_equal(rows, np.full((1, 3), 2 * i))
    assert sum(calls) == 12 and batcher.batch_rows == 12 and batcher.batches == len(calls)


def test_batching_session_without_wait_uses_no_thread():
    class Session:
        max_len = 3

        def scores(self, rows):
            return rows.sum(axis=1, keepdims=True)

    before = threading.active_count()
    session = BatchingSession(Session(), max_batch=8)
    assert isinstance(session.batcher, CombiningBatcher) and threading.active_count() == before
    np.testing.assert_array_equal(session.scores(np.array([[1, 2, 3]])), [[6]])


# -- the feature client's combined look-ups --------------------------------------------


class _Users(features_pb2_grpc.FeatureServiceServicer):
    """Answers GetUserFeatures with a history naming the user; counts calls; slow on demand."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.delay_s = 0.0

    def GetUserFeatures(self, request, context):
        self.calls.append(list(request.user_ids))
        time.sleep(self.delay_s)
        if any(u.startswith("bad") for u in request.user_ids):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad user id")
        response = features_pb2.GetUserFeaturesResponse(schema_hash="s")
        for u in request.user_ids:
            response.users.add(user_id=u, found=True, history=[f"{u}-item"] * min(3, request.max_history))
        return response


@pytest.fixture()
def users_server():
    from concurrent import futures

    servicer = _Users()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    features_pb2_grpc.add_FeatureServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_concurrent_user_lookups_share_calls_and_each_gets_its_own_user(users_server):
    servicer, target = users_server
    servicer.delay_s = 0.02
    client = FeatureClient(target)
    try:
        out = _run_together(lambda i: client.get_user(f"u{i}", 50), 12)
    finally:
        client.close()
    assert [v.user_id for v in out] == [f"u{i}" for i in range(12)]
    assert all(v.found and v.history == (f"u{i}-item",) * 3 for i, v in enumerate(out))
    assert len(servicer.calls) < 12 and sorted(u for call in servicer.calls for u in call) == sorted(
        f"u{i}" for i in range(12)
    )


def test_one_bad_id_in_a_combined_call_fails_only_its_own_request(users_server):
    servicer, target = users_server
    servicer.delay_s = 0.02
    client = FeatureClient(target)
    try:
        out = _run_together(lambda i: client.get_user("bad" if i == 5 else f"u{i}", 50), 10)
    finally:
        client.close()
    assert isinstance(out[5], InvalidArgument)
    assert [v.user_id for i, v in enumerate(out) if i != 5] == [f"u{i}" for i in range(10) if i != 5]


def test_a_slow_feature_service_fails_each_request_at_its_own_deadline(users_server):
    servicer, target = users_server
    servicer.delay_s = 0.5
    client = FeatureClient(target)
    try:
        started = time.monotonic()
        out = _run_together(lambda i: client.get_user(f"u{i}", 50, timeout_s=0.1), 4)
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert all(isinstance(o, Unavailable) for o in out) and elapsed < 0.45


def test_combining_can_be_turned_off(users_server):
    _, target = users_server
    client = FeatureClient(target, combine_users=False)
    try:
        assert client.users is None and client.get_user("u1", 50).history == ("u1-item",) * 3
        with pytest.raises(InvalidArgument):
            client.get_user("bad", 50)
    finally:
        client.close()
