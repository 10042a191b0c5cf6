"""Rollouts: the canary split, answers checked and compared, shadow scoring off the request's
path, promotion, and automatic rollback of a broken candidate with no failed client request."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner

from feature_service.server import create_feature_server
from inference_server.config import AutoRollout, InferenceConfig, RolloutLimits
from inference_server.pipeline import SOURCE_MODEL, SOURCE_POPULARITY, Recommendation
from inference_server.repository import ModelRepository, ServedModel
from inference_server.rollout import PROMOTED, ROLLED_BACK, RUNNING, Rollout, answer_problem, in_canary
from inference_server.server import start_inference_service
from recsys.artifact import MANIFEST, read_manifest
from recsys.cli import main
from recsys.errors import InvalidArgument
from recsys.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc

USERS = [f"u{i:03d}" for i in range(80)]  # the users the feature store knows


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- the split, the limits, the checks -------------------------------------------------------


def test_canary_sends_five_percent_of_users_the_same_ones_every_time():
    users = [f"user-{i}" for i in range(10_000)]
    picked = {u for u in users if in_canary(u, 0.05, "m/2")}
    assert 400 <= len(picked) <= 600  # 5 % ± 1 of 10,000
    assert picked == {u for u in users if in_canary(u, 0.05, "m/2")}  # the same users every time
    # A hash, not Python's per-process hash(): replicas and restarts agree.
    first = int.from_bytes(hashlib.sha256(b"m/2user-0").digest()[:8], "big") / 2**64
    assert in_canary("user-0", 0.05, "m/2") == (first < 0.05)
    assert picked <= {u for u in users if in_canary(u, 0.2, "m/2")}  # widening keeps the first users
    other = {u for u in users if in_canary(u, 0.05, "m/3")}  # another rollout, other users
    assert len(picked & other) < 100
    assert not any(in_canary(u, 0.0) for u in users[:1000]) and all(in_canary(u, 1.0) for u in users[:1000])


def test_auto_rollout_specs_and_limits_from_the_manifest():
    assert AutoRollout.parse("none") is None
    assert AutoRollout.parse("canary") == AutoRollout("canary", 0.05, None)
    assert AutoRollout.parse("canary:0.1:60") == AutoRollout("canary", 0.1, 60.0)
    assert AutoRollout.parse("shadow:30") == AutoRollout("shadow", 1.0, 30.0)
    for bad in ("canary:2", "canary:x", "shadow:0.1:3", "blue-green", "canary:0.1:-1"):
        with pytest.raises(ValueError):
            AutoRollout.parse(bad)
    training = {"rollout": {"max_error_rate": 0.05, "min_requests": 50, "colour": "red"}}
    limits = RolloutLimits.of_manifest(training)
    assert (limits.max_error_rate, limits.min_requests, limits.max_p99_ms) == (0.05, 50, 250.0)
    assert limits.merged({"min_requests": 5, "max_p99_ms": None}).min_requests == 5
    assert RolloutLimits.of_manifest({}) == RolloutLimits()
    with pytest.raises(ValueError, match="rollouts need a model repository"):
        InferenceConfig(artifact_dir="a", rollout=AutoRollout()).check()


def test_unsound_answers_are_named():
    assert answer_problem([3.0, 2.0], SOURCE_MODEL) is None
    assert answer_problem([1.0, float("nan")], SOURCE_MODEL) == "non-finite scores"
    assert answer_problem([float("inf")], SOURCE_MODEL) == "non-finite scores"
    assert answer_problem([2.0, 2.0, 2.0], SOURCE_MODEL) == "every item has the same score"
    assert answer_problem([2.0, 2.0], SOURCE_MODEL, distinct=False) is None  # the same item twice
    assert answer_problem([5.0], SOURCE_MODEL) is None
    assert answer_problem([], SOURCE_MODEL) == "an empty answer"
    assert answer_problem([1.0, 1.0], SOURCE_POPULARITY) is None  # not the model's answer
    assert answer_problem([3.0, -math.inf], SOURCE_MODEL) is None  # Score: an item it does not know


# -- a rollout over test doubles ---------------------------------------------------------------


class Fake:
    """A recommender double ranking `order` (its scores count down), or failing as told."""

    def __init__(self, order: str = "abcdefghijkl", *, fail: bool = False, nan: bool = False, delay_s: float = 0.0):
        self.order, self.fail, self.nan, self.delay_s = list(order), fail, nan, delay_s
        self.calls = 0

    def _value(self, item: str) -> float:
        return float("nan") if self.nan else float(len(self.order) - self.order.index(item))

    def recommend(self, user_id, k, exclude_seen, explain=False, *, history=(), timeout_s=None):
        self.calls += 1
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("the candidate is broken")
        items = self.order[:k]
        return Recommendation(items, [self._value(i) for i in items], [""] * len(items), SOURCE_MODEL)

    def score_all(self, user_id, item_ids, *, timeout_s=None):
        self.calls += 1
        if self.fail:
            raise RuntimeError("the candidate is broken")
        if not item_ids:
            raise InvalidArgument("item_ids is empty")
        unknown = [i for i in item_ids if i not in self.order]
        return [-math.inf if i in unknown else self._value(i) for i in item_ids], SOURCE_MODEL, unknown

    def score(self, user_id, item_ids, *, timeout_s=None):
        return self.score_all(user_id, item_ids, timeout_s=timeout_s)[:2]


def served(recommender: Fake, version: int) -> ServedModel:
    return ServedModel(recommender, Path("."), version, f"m/{version}:fake")


def start(candidate: Fake, mode: str = "canary", fraction: float = 0.5, **limits) -> tuple[Rollout, list[str]]:
    failures: list[str] = []
    rollout = Rollout(
        served(candidate, 2),
        mode,
        fraction,
        RolloutLimits().merged(limits),
        on_fail=lambda _, reason: failures.append(reason),
        salt="m/2",
    )
    return rollout, failures


def test_canary_answers_its_users_from_the_candidate_and_names_it():
    stable = served(Fake(), 1)
    rollout, failures = start(Fake(), fraction=0.3, min_requests=5)
    labels = {u: {rollout.recommend(stable, u, 5, False)[1].label for _ in range(3)} for u in USERS}
    assert all(len(got) == 1 for got in labels.values())  # each user always the same version
    candidate_users = {u for u, got in labels.items() if got == {"m/2:fake"}}
    assert candidate_users == {u for u in USERS if in_canary(u, 0.3, "m/2")} and 0 < len(candidate_users) < 80
    assert rollout.score(stable, candidate_users.pop(), ["a", "b"])[3].label == "m/2:fake"
    wait_for(lambda: rollout.status()["compared"] >= 5)  # the stable version re-answers in the background
    status = rollout.status()
    assert status["overlap"] == 1.0 and status["drift"] == 0.0 and status["candidate"]["errors"] == 0
    assert status["state"] == RUNNING and not failures and rollout.ready_to_promote() is False  # no promote_after_s
    rollout.finish(PROMOTED, "done")


@pytest.mark.parametrize("broken", [Fake(fail=True), Fake(nan=True)], ids=["raises", "nan"])
def test_a_failing_canary_never_reaches_the_client_and_is_rolled_back_once(broken):
    stable = served(Fake(), 1)
    rollout, failures = start(broken, fraction=1.0)
    answers = [rollout.recommend(stable, u, 5, False) for u in USERS[:10]]
    assert all(who.label == "m/1:fake" and rec.scores == [12.0, 11.0, 10.0, 9.0, 8.0] for rec, who in answers)
    assert rollout.state == ROLLED_BACK and failures == [rollout.reason] and "3 failed answers in a row" in failures[0]
    assert broken.calls == 3  # rolled back: the candidate is not asked again
    kind = "errors" if broken.fail else "bad_answers"
    assert rollout.status()["candidate"][kind] == 3


def test_limits_roll_back_on_error_rate_latency_and_overlap():
    stable = served(Fake(), 1)
    flaky = Fake()
    rollout, failures = start(flaky, fraction=1.0, min_requests=10, max_error_rate=0.05)
    for i, user in enumerate(USERS[:20]):
        flaky.fail = i % 5 == 0  # one answer in five fails, never three in a row
        rollout.recommend(stable, user, 3, False)
    assert rollout.state == ROLLED_BACK and "failed (20.0% > 5.0%)" in failures[0]

    rollout, failures = start(Fake(delay_s=0.02), fraction=1.0, min_requests=5, max_p99_ms=5)
    for user in USERS[:5]:
        rollout.recommend(stable, user, 3, False)
    assert rollout.state == ROLLED_BACK and "p99 latency" in failures[0]

    rollout, failures = start(Fake("lkjihgfedcba"), fraction=1.0, min_requests=5, min_overlap=0.5)
    for user in USERS[:40]:
        rollout.recommend(stable, user, 3, False)
    wait_for(lambda: rollout.state == ROLLED_BACK)  # the comparisons run in the background
    assert "top-10 overlap with the stable version 0.00 < 0.5" in failures[0]


def test_shadow_scores_in_the_background_and_drops_when_busy():
    stable = served(Fake(), 1)
    rollout, failures = start(Fake("abcdefghijlk"), mode="shadow", fraction=1.0)  # k and l swapped
    for user in USERS[:20]:
        rec, who = rollout.recommend(stable, user, 12, False)
        assert who.label == "m/1:fake" and rec.item_ids == list("abcdefghijkl")
    wait_for(lambda: rollout.status()["compared"] == 20)
    status = rollout.status()
    # Top-10 overlap: both have a-j on top; drift: the candidate scores k and l one apart, the
    # rest alike, but only the stable's top 10 are compared.
    assert status["overlap"] == 1.0 and status["drift"] == 0.0 and status["candidate"]["requests"] == 20
    scores, _, unknown, who = rollout.score(stable, "u000", ["k", "a", "new"])
    assert who.label == "m/1:fake" and unknown == ["new"] and scores[2] == -math.inf
    wait_for(lambda: rollout.status()["candidate"]["requests"] == 21)
    wait_for(lambda: rollout.status()["drift"] > 0)  # k: 2 vs 1, a alike, "new" unknown to both: 0.5
    rollout.finish(PROMOTED, "done")

    slow = Fake(delay_s=0.5)
    rollout, failures = start(slow, mode="shadow", fraction=1.0)
    begin = time.monotonic()
    for user in USERS:
        rollout.recommend(stable, user, 3, False)
    assert time.monotonic() - begin < 0.5  # 80 requests while the candidate takes 0.5 s each
    assert rollout.status()["dropped"] >= 80 - 2 - 64  # two workers busy, 64 queued, the rest dropped
    rollout.finish(ROLLED_BACK, "done")
    assert not failures


# -- through the server ------------------------------------------------------------------------


@pytest.fixture
def features(trained_artifact):
    server, port, _, core = create_feature_server(trained_artifact, "memory://", host="127.0.0.1")
    yield f"127.0.0.1:{port}"
    server.stop(None)
    core.close()


@pytest.fixture
def breakable(monkeypatch):
    """{version directory name: how}: such versions load and pass their checks, then answer
    Recommend by raising ("raise"), or (with "nan") their ONNX model gives NaN scores once
    `breakable["now"]` is set: the pipeline then answers from popularity and reports the run."""
    from inference_server import server

    real, broken = server._stage, {}

    def stage(path, client, **kwargs):
        recommender = real(path, client, **kwargs)
        how = broken.get(Path(path).name)
        if how == "raise":

            def recommend(*args, **kwargs):
                raise RuntimeError("broken")

            recommender.recommend = recommend
        elif how == "nan":
            scores = recommender.session.scores
            recommender.session.scores = lambda x: np.full_like(scores(x), np.nan) if broken.get("now") else scores(x)
        return recommender

    monkeypatch.setattr(server, "_stage", stage)
    return broken


def with_limits(artifact: Path, out: Path, limits: dict) -> Path:
    """`artifact` copied, with `limits` as its manifest's training["rollout"]."""
    shutil.copytree(artifact, out)
    manifest = read_manifest(out)
    training = {**manifest.training, "rollout": limits}
    (out / MANIFEST).write_text(dataclasses.replace(manifest, training=training).to_json())
    return out


class Clients:
    """Threads calling Recommend for every known user in turn until stopped; they keep every
    failure, the version each user got and the versions of degraded answers."""

    def __init__(self, port: int, threads: int = 3) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.failures: list[BaseException] = []
        self.got: dict[str, set[str]] = {}
        self.calls = 0
        self.degraded: set[str] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            user = USERS[i % len(USERS)]
            i += len(self._threads)
            try:
                reply = self.stub.Recommend(inference_pb2.RecommendRequest(user_id=user, k=5), timeout=10)
                self.got.setdefault(user, set()).add(reply.model_version)
                self.calls += 1
                if reply.degraded:
                    self.degraded.add(reply.model_version)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted
                self.failures.append(exc)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.channel.close()


def test_broken_canary_is_rolled_back_within_10_s_without_a_failed_request(
    trained_artifact, features, breakable, tmp_path, caplog
):
    repo = ModelRepository(tmp_path / "repo")
    repo.publish(trained_artifact, "m")
    service = start_inference_service(None, features, repo=repo.root, model="m", watch_interval_s=0, host="127.0.0.1")
    stable = f"m/1:{read_manifest(trained_artifact).model_version}"
    clients = Clients(service.port)
    try:
        breakable["2"] = "raise"
        repo.publish(trained_artifact, "m")
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            started = admin.StartRollout(admin_pb2.StartRolloutRequest(version=2, fraction=0.2), timeout=30).rollout
            begin = time.monotonic()
            assert (started.version, started.mode, started.state, started.fraction) == (2, "canary", RUNNING, 0.2)
            wait_for(lambda: not service.manager.rollout.running)
            took = time.monotonic() - begin
            status = admin.GetModelStatus(admin_pb2.GetModelStatusRequest(), timeout=10)
        calls = clients.calls
        wait_for(lambda: clients.calls > calls + 20)  # still answering, from version 1
    finally:
        clients.stop()
        service.stop()
    assert took < 10, took
    print(f"broken canary rolled back {took * 1000:.0f} ms after StartRollout, {clients.calls} calls, 0 failed")
    assert not clients.failures and set().union(*clients.got.values()) == {stable}
    r = status.rollout
    assert (r.state, status.serving_version) == (ROLLED_BACK, 1)
    assert 3 <= r.candidate.errors <= 5  # the third in a row ends it; two more clients may be inside
    assert "3 failed answers in a row (last: RuntimeError: broken)" in r.reason
    assert [(v.version, v.reason) for v in status.rejected] == [(2, f"rolled back: {r.reason}")]
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.ERROR]
    assert [m for m in errors if "rolled back" in m] == [
        f"model m version 2 rolled back: {r.reason}; still serving {stable}"
    ]


def test_new_versions_go_through_a_canary_promoted_when_healthy_or_rolled_back(
    trained_artifact, features, breakable, tmp_path
):
    repo = ModelRepository(tmp_path / "repo")
    repo.publish(trained_artifact, "m")
    service = start_inference_service(
        None,
        features,
        repo=repo.root,
        model="m",
        watch_interval_s=0.05,
        rollout=AutoRollout("canary", 0.25, promote_after_s=1.0),
        host="127.0.0.1",
        metrics_port=0,
        metrics_host="127.0.0.1",
    )
    model_version = read_manifest(trained_artifact).model_version
    clients = Clients(service.port)
    try:
        # Version 2's model gives NaN once served: found by the watcher, canaried, rolled back.
        breakable["2"] = "nan"
        repo.publish(trained_artifact, "m")
        wait_for(lambda: service.manager.rollout is not None)
        begin = time.monotonic()
        breakable["now"] = True
        wait_for(lambda: 2 in service.manager.rejected)
        took = time.monotonic() - begin
        assert "non-finite scores (it answered from popularity)" in service.manager.rejected[2]
        time.sleep(0.3)  # more watch rounds: the rejected version is not tried again
        assert service.manager.rollout.state == ROLLED_BACK and service.manager.current.version == 1

        # Version 3 is sound, and its manifest sets its limits: canaried, then promoted.
        healthy = with_limits(trained_artifact, tmp_path / "healthy", {"min_requests": 5, "max_p99_ms": 5000})
        repo.publish(healthy, "m")
        wait_for(lambda: service.manager.rollout.candidate.version == 3)
        canary_users = {u for u in USERS if in_canary(u, 0.25, "m/3")}
        with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert "recsys_rollout_running 1.0" in text and 'recsys_rollout_answers_total{side="candidate"}' in text
        wait_for(lambda: service.manager.current.version == 3)
        rollout = service.manager.rollout.status()
        assert rollout["state"] == PROMOTED and rollout["reason"] == "healthy for 1 s"
        assert rollout["limits"]["min_requests"] == 5 and rollout["candidate"]["requests"] >= 5
        assert rollout["overlap"] == 1.0  # the same trained model: the same top items
    finally:
        clients.stop()
        service.stop()
    assert took < 10, took
    print(f"NaN canary rolled back {took * 1000:.0f} ms after its model turned NaN")
    # Version 2 answered its users while sound; its NaN runs (answered from popularity:
    # degraded) never reached a client, the stable version answered them.
    labels = [f"m/{v}:{model_version}" for v in (1, 2, 3)]
    assert not clients.failures and labels[1] not in clients.degraded
    assert {labels[0], labels[2]} <= set().union(*clients.got.values()) <= set(labels)
    assert all(labels[2] in clients.got[u] for u in canary_users)


def test_shadow_promote_and_abort_through_the_cli(trained_artifact, features, tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    repo.publish(trained_artifact, "m")
    repo.publish(trained_artifact, "m")
    service = start_inference_service(
        None, features, repo=repo.root, model="m", version=1, watch_interval_s=0, host="127.0.0.1"
    )
    model_version = read_manifest(trained_artifact).model_version
    server = ["--server", f"127.0.0.1:{service.port}"]

    def cli(*args: str) -> dict:
        result = CliRunner().invoke(main, ["model", *args, *server])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    try:
        result = CliRunner().invoke(main, ["model", "promote", *server])
        assert result.exit_code != 0 and "FAILED_PRECONDITION" in result.output and "no rollout" in result.output
        started = cli("rollout", "2", "--shadow", "--min-requests", "3")["rollout"]
        assert (started["mode"], started["fraction"], started["limits"]["minRequests"]) == ("shadow", 1.0, "3")
        clients = Clients(service.port, threads=1)
        try:
            wait_for(lambda: service.manager.rollout.status()["compared"] >= 10)
        finally:
            clients.stop()
        assert not clients.failures and set().union(*clients.got.values()) == {f"m/1:{model_version}"}
        rollout = cli("status")["rollout"]
        assert rollout["state"] == "running" and rollout["overlap"] == 1.0 and rollout["drift"] < 1e-4
        assert int(rollout["candidate"]["requests"]) >= 10 and int(rollout["stable"]["requests"]) >= 10

        promoted = cli("promote")
        assert promoted["servingVersion"] == "2" and promoted["rollout"]["state"] == "promoted"
        assert service.manager.policy == "pinned" and service.manager.current.version == 2

        repo.publish(trained_artifact, "m")
        assert cli("rollout", "0", "--canary", "0.5")["rollout"]["version"] == "3"  # 0: the newest
        result = CliRunner().invoke(main, ["model", "rollout", "3", "--canary", "0.1", "--shadow", *server])
        assert result.exit_code == 2 and "exclude each other" in result.output
        aborted = cli("abort", "--reason", "looks odd")
        assert aborted["servingVersion"] == "2" and aborted["rollout"]["state"] == "rolled_back"
        status = cli("status")
        assert status["rejected"] == [{"version": "3", "reason": "rolled back: looks odd"}]
        result = CliRunner().invoke(main, ["model", "rollout", "2", *server])
        assert result.exit_code != 0 and "is the one serving" in result.output
    finally:
        service.stop()


def test_serve_inference_takes_a_rollout_spec(trained_artifact, monkeypatch):
    import inference_server.server

    configs = []
    monkeypatch.setattr(inference_server.server, "serve", configs.append)
    base = ["serve", "inference", "--features", "127.0.0.1:1", "--port", "0"]
    repo = ["--repo", str(trained_artifact.parent), "--model", "m"]
    result = CliRunner().invoke(main, [*base, *repo, "--rollout", "canary:0.05:60"])
    assert result.exit_code == 0, result.output
    assert configs[0].rollout == AutoRollout("canary", 0.05, 60.0)
    result = CliRunner().invoke(main, [*base, *repo])
    assert result.exit_code == 0 and configs[1].rollout is None  # the default: swap at once
    result = CliRunner().invoke(main, [*base, *repo, "--rollout", "canary:5"])
    assert result.exit_code == 2 and "--rollout" in result.output
    result = CliRunner().invoke(main, [*base, "--artifact", str(trained_artifact), "--rollout", "shadow"])
    assert result.exit_code == 2 and "needs --repo" in result.output
