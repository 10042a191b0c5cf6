"""`recsys.client` against real in-process servers: every method, the error mapping, TLS and
tokens, retries of reads (and none of writes), and 1,000 concurrent calls on one event loop."""

from __future__ import annotations

import asyncio
import json
import math
import time
from concurrent import futures

import grpc
import pytest
from click.testing import CliRunner

from feature_service.server import create_feature_server
from inference_server.repository import ModelRepository
from inference_server.server import start_inference_service
from recsys import errors
from recsys.client import AsyncRecsysClient, Interaction, RecsysClient, error
from recsys.v1 import features_pb2, inference_pb2


@pytest.fixture(scope="module")
def stack(trained_artifact, tmp_path_factory):
    """A feature server and an inference server serving version 1 of a two-version repository."""
    fserver, fport, _, core = create_feature_server(trained_artifact, "memory://", host="127.0.0.1")
    repo = ModelRepository(tmp_path_factory.mktemp("client-repo"))
    repo.publish(trained_artifact, "m")
    repo.publish(trained_artifact, "m")
    service = start_inference_service(
        None,
        f"127.0.0.1:{fport}",
        repo=repo.root,
        model="m",
        version=1,
        watch_interval_s=0,
        host="127.0.0.1",
        max_concurrent_rpcs=2000,
    )
    yield f"127.0.0.1:{service.port}", f"127.0.0.1:{fport}"
    service.stop(None)
    fserver.stop(None)
    core.close()


@pytest.fixture
def client(stack):
    with RecsysClient(*stack) as c:
        yield c


def test_recommend_and_score(client):
    rec = client.recommend("u001", 5)
    assert len(rec.items) == 5 and rec.source == "model" and not rec.degraded
    assert rec.model_version.startswith("m/1:")
    assert [i.score for i in rec.items] == sorted((i.score for i in rec.items), reverse=True)
    assert all(i.title.startswith("Movie ") and not i.because_items for i in rec.items)
    explained = client.recommend("u001", 3, explain=True, timeout_s=10)
    assert all(i.because_items for i in explained.items)
    assert client.recommend("nobody", 2).source == "popularity"

    top = [i.item_id for i in rec.items[:2]]
    scores = client.score("u001", [*top, "no-such-item"])
    assert scores.unknown_item_ids == ("no-such-item",) and math.isinf(scores.scores[2])
    assert scores.scores[:2] == pytest.approx([i.score for i in rec.items[:2]], abs=1e-4)


def test_feature_methods(client):
    contract = client.feature_contract()
    schema = json.loads(contract.schema_json)
    assert contract.schema_hash and "user" in json.dumps(schema)

    events = [("c-user", "m01", 10), {"user_id": "c-user", "item_id": "m02", "timestamp": 20, "event_id": "e2"}]
    events.append(Interaction("c-user", "m03", 30))
    assert client.record_interactions(events).recorded == 3
    again = client.record_interactions([Interaction("c-user", "m09", 99, event_id="e2")])
    assert (again.recorded, again.duplicates) == (0, 1)

    assert client.update_user_features({"c-user": {"gender": "F", "age": 33.0}}) == 1
    [user, unknown] = client.get_user_features(["c-user", "nobody"], max_history=2)
    assert user.found and not unknown.found
    assert user.history == ("m02", "m03") and user.history_timestamps == (20, 30)
    assert user.features == {"gender": "F", "age": 33.0}

    assert client.update_item_features({"m01": {"genres": ["Drama", "Comedy"], "title": "Movie 1b"}}) == 1
    [item] = client.get_item_features(["m01"])
    assert item.found and item.features == {"genres": ["Drama", "Comedy"], "title": "Movie 1b"}

    assert client.forget_user("c-user") is True
    assert not client.get_user_features(["c-user"])[0].found


def test_admin_methods_and_health(client):
    status = client.model_status()
    assert (status.model, status.serving_version, status.versions) == ("m", 1, (1, 2))
    assert client.health() == "SERVING" and client.health(on="features") == "SERVING"
    assert client.health("recsys.v1.InferenceService") == "SERVING"

    started = client.start_rollout(2, "shadow", 0, limits={"min_requests": 3})
    assert (started.version, started.mode, started.state) == (2, "shadow", "running")
    assert started.raw.limits.min_requests == 3
    promoted = client.promote_rollout()
    assert promoted.serving_version == 2 and promoted.rollout.state == "promoted"
    back = client.rollback_model()
    assert back.serving_version == 1 and back.model_version.startswith("m/1:")
    assert client.load_model_version(2).serving_version == 2
    assert client.rollback_model(1).serving_version == 1
    client.start_rollout(2, fraction=0.5)
    aborted = client.abort_rollout("not today")
    assert aborted.serving_version == 1 and aborted.rollout.state == "rolled_back"
    assert client.model_status().rejected == {2: "rolled back: not today"}


def test_errors_map_to_the_tree_with_their_code(client, stack):
    with pytest.raises(errors.InvalidArgument) as info:
        client.recommend("u001", 0)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "k" in str(info.value)
    with pytest.raises(errors.NotFound):
        client.load_model_version(99)
    with pytest.raises(errors.FailedPrecondition) as info:
        client.promote_rollout()
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(ValueError, match="no features target"):
        RecsysClient(stack[0]).forget_user("x")
    with RecsysClient("127.0.0.1:1", retries=0) as down, pytest.raises(errors.Unavailable) as info:
        down.recommend("u001", timeout_s=2)
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class _Failed(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "why"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.Unavailable),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, errors.Unauthenticated),
        (grpc.StatusCode.INTERNAL, errors.RecsysError),
    ],
)
def test_error_keeps_the_code_received(code, cls):
    mapped = error(_Failed(code))
    assert type(mapped) is cls and mapped.code == code and str(mapped) == "why"


def test_tls_and_token(trained_artifact, tmp_path):
    from recsys.devcerts import make_certs
    from recsys.security import ServerSecurity, ServerTls

    certs = make_certs(tmp_path / "certs", backend="cryptography")
    tls = ServerTls(certs["server.crt"], certs["server.key"], client_ca=certs["ca.crt"])
    security = ServerSecurity(tls=tls, tokens=frozenset({"sesame"}))
    server, port, _, core = create_feature_server(trained_artifact, "memory://", security=security)
    mtls = {"tls_ca": certs["ca.crt"], "client_cert": certs["client.crt"], "client_key": certs["client.key"]}
    try:
        target = f"localhost:{port}"
        with RecsysClient(target, target, token="sesame", **mtls) as ok:
            assert ok.feature_contract().schema_hash
        with RecsysClient(target, target, token="wrong", **mtls) as bad, pytest.raises(errors.Unauthenticated) as info:
            bad.feature_contract()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED

        async def call():
            async with AsyncRecsysClient(target, target, token="sesame", **mtls) as aio:
                return await aio.feature_contract()

        assert asyncio.run(call()).schema_hash
    finally:
        server.stop(None)
        core.close()


def test_async_client_holds_1000_concurrent_recommends(stack):
    async def main():
        async with AsyncRecsysClient(*stack, timeout_s=60) as client:
            users = [f"u{i % 80:03d}" for i in range(1000)]
            started = time.perf_counter()
            answers = await asyncio.gather(*(client.recommend(u, 5) for u in users))
            took = time.perf_counter() - started
            with pytest.raises(errors.InvalidArgument):
                await client.recommend("u001", 0)
            recorded = await client.record_interactions([("aio-user", "m01", 1)])
            return answers, took, recorded

    answers, took, recorded = asyncio.run(main())
    assert len(answers) == 1000 and all(len(a.items) == 5 for a in answers)
    assert recorded.recorded == 1
    print(f"1000 concurrent Recommend calls on one event loop: {took:.2f} s")


class _Flaky:
    """A server answering Recommend and RecordInteractions with UNAVAILABLE the first time only."""

    def __init__(self):
        self.calls: dict[str, int] = {}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handlers = {
            "Recommend": (self.recommend, inference_pb2.RecommendRequest),
            "RecordInteractions": (self.record, features_pb2.RecordInteractionsRequest),
        }
        services = {"Recommend": "recsys.v1.InferenceService", "RecordInteractions": "recsys.v1.FeatureService"}
        for name, (handler, request) in handlers.items():
            method = grpc.unary_unary_rpc_method_handler(
                handler, request_deserializer=request.FromString, response_serializer=lambda r: r.SerializeToString()
            )
            self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(services[name], {name: method})])
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _count(self, name, context):
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")

    def recommend(self, request, context):
        self._count("Recommend", context)
        item = inference_pb2.ScoredItem(item_id="i1", score=1.0)
        return inference_pb2.RecommendResponse(items=[item], model_version="fake", source=inference_pb2.SOURCE_MODEL)

    def record(self, request, context):
        self._count("RecordInteractions", context)
        return features_pb2.RecordInteractionsResponse(recorded=len(request.interactions))


def test_reads_are_retried_on_unavailable_and_writes_are_not():
    flaky = _Flaky()
    try:
        with RecsysClient(flaky.target, flaky.target) as client:
            assert client.recommend("u", 1).items[0].item_id == "i1"
            assert flaky.calls["Recommend"] == 2
            with pytest.raises(errors.Unavailable, match="warming up"):
                client.record_interactions([("u", "i", 1)])
            assert flaky.calls["RecordInteractions"] == 1
        flaky.calls.clear()
        with RecsysClient(flaky.target, retries=0) as client, pytest.raises(errors.Unavailable):
            client.recommend("u", 1)
    finally:
        flaky.server.stop(None)


def test_health_command_uses_the_client(stack):
    from recsys.cli import main

    result = CliRunner().invoke(main, ["health", "--server", stack[0]])
    assert result.exit_code == 0 and result.output.strip().endswith(": SERVING"), result.output
    result = CliRunner().invoke(main, ["health", "--server", "127.0.0.1:1", "--timeout", "1"])
    assert result.exit_code == 1 and "UNAVAILABLE" in result.output


def test_recommend_command_prints_json(stack):
    from recsys.cli import main

    result = CliRunner().invoke(main, ["recommend", "--server", stack[0], "--user", "u000", "--k", "3", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["user_id"] == "u000" and answer["source"] == "model" and answer["degraded"] is False
    assert len(answer["items"]) == 3 and {"item_id", "score", "title"} <= set(answer["items"][0])
    assert answer["model_version"].startswith("m/")


NODE_CLIENT = """
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");
const def = loader.loadSync("recsys/v1/inference.proto", { includeDirs: [process.argv[2]], keepCase: true, longs: String, enums: String });
const { InferenceService } = grpc.loadPackageDefinition(def).recsys.v1;
const client = new InferenceService(process.argv[3], grpc.credentials.createInsecure());
client.Recommend({ user_id: "u001", k: 3, exclude_seen: true }, { deadline: Date.now() + 10000 }, (err, res) => {
  if (err) { console.error(err.message); process.exit(1); }
  console.log(JSON.stringify(res));
});
"""


def test_node_client_recommends(stack):
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    work = root / "build" / "node-client"  # git-ignored; `make node-client` installs the packages (network)
    if shutil.which("node") is None or not (work / "node_modules" / "@grpc" / "proto-loader").exists():
        pytest.skip("node or the Node gRPC packages are missing (apt-get install nodejs npm; make node-client)")
    (work / "recommend.js").write_text(NODE_CLIENT)
    done = subprocess.run(
        ["node", "recommend.js", str(root / "protos"), stack[0]], cwd=work, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert len(answer["items"]) == 3 and answer["source"] == "SOURCE_MODEL"
    assert answer["model_version"].startswith("m/1:")
