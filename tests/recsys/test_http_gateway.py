"""The HTTP/JSON gateway against real in-process gRPC servers, through a real HTTP client."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from feature_service.server import create_feature_server
from inference_server.server import start_inference_service
from recsys.http_gateway import HTTP_STATUS, GatewayConfig, create_gateway, openapi_json
from recsys.security import ServerSecurity
from recsys.v1 import features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc, types_pb2

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
TOKEN = "gateway-test-token"


@contextlib.contextmanager
def gateway(inference_target: str, features_target: str, **fields):
    server, port = create_gateway(GatewayConfig(inference_target, features_target, port=0, **fields))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def stack(artifact, *, security=None):
    """Feature service, inference server and gateway on loopback; yields (gateway, inference,
    features, stop_features)."""
    fserver, fport, _, fcore = create_feature_server(artifact, "memory://", host="127.0.0.1")
    ftarget = f"127.0.0.1:{fport}"
    service = start_inference_service(artifact, ftarget, host="127.0.0.1", security=security)
    itarget = f"127.0.0.1:{service.port}"
    stopped = []

    def stop_features() -> None:
        if not stopped:
            fserver.stop(None).wait()
            fcore.close()
            stopped.append(True)

    try:
        with gateway(itarget, ftarget) as address:
            yield address, itarget, ftarget, stop_features
    finally:
        service.stop(None)
        stop_features()


def call(address: str, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(address, timeout=10)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def sasrec(trained_artifact):
    with stack(trained_artifact) as servers:
        yield servers


def grpc_recommend(target: str, request: inference_pb2.RecommendRequest) -> inference_pb2.RecommendResponse:
    with grpc.insecure_channel(target) as channel:
        return inference_pb2_grpc.InferenceServiceStub(channel).Recommend(request, timeout=5)


def same_answer(address: str, itarget: str, body: dict) -> None:
    status, answer = call(address, "POST", "/v1/recommend", body)
    assert status == 200, answer
    via_http = json_format.ParseDict(answer, inference_pb2.RecommendResponse())
    via_grpc = grpc_recommend(itarget, json_format.ParseDict(body, inference_pb2.RecommendRequest()))
    assert via_http.items and via_http.source == inference_pb2.SOURCE_MODEL
    assert [(i.item_id, i.score) for i in via_http.items] == [(i.item_id, i.score) for i in via_grpc.items]
    assert via_http.model_version == via_grpc.model_version


def test_recommend_answers_what_grpc_answers_with_both_field_spellings(sasrec):
    address, itarget, _, _ = sasrec
    same_answer(address, itarget, {"userId": "u001", "k": 5, "excludeSeen": True})
    same_answer(address, itarget, {"user_id": "u002", "k": 3, "exclude_seen": False})
    status, answer = call(address, "POST", "/v1/recommend", {"userId": "u001", "k": 2})
    # every field printed, defaults included, with the JSON names
    assert set(answer) == {"items", "modelVersion", "source", "degraded"} and answer["degraded"] is False
    assert set(answer["items"][0]) == {"itemId", "score", "title", "becauseItems", "becauseFeatures"}


def test_recommend_with_a_ranker(ranker_artifact):
    with stack(ranker_artifact) as (address, itarget, _, _):
        same_answer(address, itarget, {"userId": "u005", "k": 5, "excludeSeen": True})


def test_score_and_unknown_items(sasrec):
    address, itarget, _, _ = sasrec
    status, answer = call(address, "POST", "/v1/score", {"userId": "u001", "itemIds": ["m01", "nope", "m02"]})
    assert status == 200, answer
    with grpc.insecure_channel(itarget) as channel:
        expected = inference_pb2_grpc.InferenceServiceStub(channel).Score(
            inference_pb2.ScoreRequest(user_id="u001", item_ids=["m01", "nope", "m02"]), timeout=5
        )
    assert json_format.ParseDict(answer, inference_pb2.ScoreResponse()).scores == expected.scores
    assert answer["scores"][1] == "-Infinity" and answer["unknownItemIds"] == ["nope"]


def test_interactions_are_recorded_then_visible(sasrec):
    address, _, ftarget, _ = sasrec
    events = [{"userId": "new-user", "itemId": "m03", "timestamp": 2_000_000 + i, "eventId": f"e{i}"} for i in range(2)]
    status, answer = call(address, "POST", "/v1/interactions", {"interactions": events})
    assert (status, answer) == (200, {"recorded": 2, "duplicates": 0})
    assert call(address, "POST", "/v1/interactions", {"interactions": events[:1]})[1] == {
        "recorded": 0,
        "duplicates": 1,
    }
    with grpc.insecure_channel(ftarget) as channel:
        user = (
            features_pb2_grpc.FeatureServiceStub(channel)
            .GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["new-user"]), timeout=5)
            .users[0]
        )
    assert user.found and list(user.history) == ["m03", "m03"]


def test_models_healthz_and_readyz(sasrec):
    address, _, _, _ = sasrec
    status, models = call(address, "GET", "/v1/models")
    assert status == 200 and models["policy"] == "artifact" and models["modelVersion"]
    assert models["servingVersion"] == "0"  # int64 is a string in protobuf's JSON
    assert call(address, "GET", "/healthz") == (200, {"status": "SERVING"})
    assert call(address, "GET", "/readyz") == (200, {"inference": "SERVING", "features": "SERVING"})


def test_readyz_and_calls_fail_when_the_feature_service_stops(trained_artifact):
    with stack(trained_artifact) as (address, _, _, stop_features):
        stop_features()
        status, states = call(address, "GET", "/readyz")
        assert status == 503 and states["features"] != "SERVING"
        assert call(address, "GET", "/healthz")[0] == 200
        status, error = call(address, "POST", "/v1/interactions", {"interactions": []})
        assert (status, error["code"]) == (503, "UNAVAILABLE")


@pytest.mark.parametrize(
    "method, path, body, headers, expected",
    [
        ("POST", "/v1/recommend", {"userId": "u001", "k": 0}, {}, (400, "INVALID_ARGUMENT")),  # from the server
        ("POST", "/v1/recommend", b"{not json", {}, (400, "INVALID_ARGUMENT")),
        ("POST", "/v1/recommend", b"[1, 2]", {}, (400, "INVALID_ARGUMENT")),
        ("POST", "/v1/recommend", {"userId": "u001", "kk": 3}, {}, (400, "INVALID_ARGUMENT")),  # unknown field
        ("POST", "/v1/recommend", {"userId": 5}, {}, (400, "INVALID_ARGUMENT")),  # wrong type
        ("POST", "/v1/recommend", b'{"history": ' + b"[" * 100_000, {}, (400, "INVALID_ARGUMENT")),  # too deep
        ("POST", "/v1/recommend", b"\xff{}", {}, (400, "INVALID_ARGUMENT")),  # not UTF-8
        ("POST", "/v1/recommend?timeout=abc", {"userId": "u001", "k": 1}, {}, (400, "INVALID_ARGUMENT")),
        ("POST", "/v1/recommend?timeout=1e9", {"userId": "u001", "k": 1}, {}, (400, "INVALID_ARGUMENT")),
        ("POST", "/v1/recommend", {"userId": "u001", "k": 1}, {"X-Request-Id": "\x7f"}, (400, "INVALID_ARGUMENT")),
        ("POST", "/v1/nothing", {}, {}, (404, "NOT_FOUND")),
        ("GET", "/v1/recommend", None, {}, (405, "UNIMPLEMENTED")),
        ("POST", "/v1/models", {}, {}, (405, "UNIMPLEMENTED")),
        ("DELETE", "/healthz", None, {}, (405, "UNIMPLEMENTED")),
        ("POST", "/v1/recommend", b"{}", {"Content-Length": str(5 * 1024 * 1024)}, (413, "RESOURCE_EXHAUSTED")),
    ],
)
def test_http_errors(sasrec, method, path, body, headers, expected):
    status, error = call(sasrec[0], method, path, body, headers)
    assert (status, error["code"]) == expected and error["message"], error


def test_a_body_without_content_length_is_refused(sasrec):
    connection = http.client.HTTPConnection(sasrec[0], timeout=10)
    connection.putrequest("POST", "/v1/recommend")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 411 and json.loads(response.read())["code"] == "INVALID_ARGUMENT"
    connection.close()


def test_keep_alive_serves_many_requests_on_one_connection(sasrec):
    connection = http.client.HTTPConnection(sasrec[0], timeout=10)
    for user in ("u001", "u002", "u003"):
        connection.request("POST", "/v1/recommend", body=json.dumps({"userId": user, "k": 2}).encode())
        response = connection.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["items"]) == 2
    connection.close()


class _Failing(inference_pb2_grpc.InferenceServiceServicer):
    """Aborts every Recommend with the status named by its user_id; "slow" answers after 1 s."""

    def Recommend(self, request, context):
        if request.user_id == "slow":
            time.sleep(1.0)
            return inference_pb2.RecommendResponse()
        context.abort(grpc.StatusCode[request.user_id], f"failed with {request.user_id}")


@pytest.fixture(scope="module")
def failing_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(_Failing(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with gateway(f"127.0.0.1:{port}", f"127.0.0.1:{port}") as address:
        yield address
    server.stop(None)


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK], ids=lambda c: c.name)
def test_every_grpc_status_maps_to_its_http_status(failing_server, code):
    status, error = call(failing_server, "POST", "/v1/recommend", {"userId": code.name, "k": 1})
    assert status == HTTP_STATUS.get(code, 500)
    assert error == {"code": code.name, "message": f"failed with {code.name}"}


def test_the_timeout_parameter_is_the_calls_deadline(failing_server):
    start = time.monotonic()
    status, error = call(failing_server, "POST", "/v1/recommend?timeout=0.1", {"userId": "slow", "k": 1})
    assert (status, error["code"]) == (504, "DEADLINE_EXCEEDED") and time.monotonic() - start < 0.9
    assert call(failing_server, "POST", "/v1/recommend?timeout=5", {"userId": "slow", "k": 1})[0] == 200


def test_the_bearer_token_is_forwarded(trained_artifact):
    security = ServerSecurity(tokens=frozenset({TOKEN}))
    body = {"userId": "u001", "k": 2}
    with stack(trained_artifact, security=security) as (address, itarget, ftarget, _):
        status, error = call(address, "POST", "/v1/recommend", body)
        assert (status, error["code"]) == (401, "UNAUTHENTICATED")
        wrong = call(address, "POST", "/v1/recommend", body, {"Authorization": "Bearer not-it"})
        assert wrong[0] == 401
        assert call(address, "POST", "/v1/recommend", body, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert call(address, "GET", "/readyz")[0] == 200  # health stays open
        # The gateway's own token serves requests that carry none; a caller's header still wins.
        with gateway(itarget, ftarget, token=TOKEN) as own:
            assert call(own, "POST", "/v1/recommend", body)[0] == 200
            assert call(own, "POST", "/v1/recommend", body, {"Authorization": "Bearer not-it"})[0] == 401


def test_serve_http_command_is_registered():
    from click.testing import CliRunner

    from recsys.cli import main

    result = CliRunner().invoke(main, ["serve", "http", "--help"])
    assert result.exit_code == 0 and "--inference" in result.output and "--token-file" in result.output


def test_openapi_document_is_fresh():
    assert OPENAPI.read_text(encoding="utf-8") == openapi_json(), (
        "docs/openapi.json is stale: python -m recsys.http_gateway --openapi > docs/openapi.json"
    )
    document = json.loads(openapi_json())
    assert set(document["paths"]) == {
        "/v1/recommend",
        "/v1/score",
        "/v1/interactions",
        "/v1/models",
        "/healthz",
        "/readyz",
    }
    recommend = document["components"]["schemas"]["RecommendRequest"]["properties"]
    assert recommend["userId"] == {"type": "string"} and recommend["history"]["type"] == "array"
    interaction = document["components"]["schemas"]["Interaction"]["properties"]
    assert interaction["timestamp"] == {"type": "string", "format": "int64"}
    assert "FeatureValue" not in document["components"]["schemas"]  # only what the endpoints use
    assert types_pb2.Interaction.DESCRIPTOR.fields_by_name["user_id"].json_name == "userId"
