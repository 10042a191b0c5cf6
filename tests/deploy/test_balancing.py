"""The feature hop spreads calls over every feature-service replica its target resolves to
(round_robin on the inference server's channel), and servers age connections out so clients
resolve again and new replicas get calls."""

from __future__ import annotations

import time

import grpc
import pytest

from inference_server.feature_client import FeatureClient
from recsys import grpc_server
from recsys.grpc_server import ServiceBinding, create_server
from recsys.v1 import features_pb2, features_pb2_grpc


class _Counting(features_pb2_grpc.FeatureServiceServicer):
    def __init__(self) -> None:
        self.calls = 0

    def GetSchema(self, request, context):
        self.calls += 1
        return features_pb2.GetSchemaResponse()


@pytest.fixture
def two_replicas():
    started = []
    for _ in range(2):
        servicer = _Counting()
        binding = ServiceBinding(
            servicer, features_pb2_grpc.add_FeatureServiceServicer_to_server, "recsys.v1.FeatureService"
        )
        server, port, _health = create_server([binding], host="127.0.0.1", port=0)
        started.append((server, port, servicer))
    # one target, two addresses: what dns:/// of a headless Service gives the client
    yield f"ipv4:127.0.0.1:{started[0][1]},127.0.0.1:{started[1][1]}", [s for _, _, s in started]
    for server, _, _ in started:
        server.stop(None)


def _ask(stub, calls: int) -> None:
    for _ in range(calls):
        stub.GetSchema(features_pb2.GetSchemaRequest(), timeout=5, wait_for_ready=True)


def test_the_feature_client_spreads_calls_over_every_address(two_replicas):
    target, servicers = two_replicas
    client = FeatureClient(target)
    try:
        deadline = time.monotonic() + 10
        while min(s.calls for s in servicers) == 0 and time.monotonic() < deadline:
            _ask(client.stub, 10)  # round_robin picks among the subchannels connected so far
        before = [s.calls for s in servicers]
        _ask(client.stub, 20)
    finally:
        client.close()
    added = [s.calls - b for s, b in zip(servicers, before, strict=True)]
    assert added == [10, 10], added


def test_a_channel_without_the_policy_sticks_to_one_address(two_replicas):
    # the control: gRPC's default (pick_first) is why the option matters
    target, servicers = two_replicas
    with grpc.insecure_channel(target) as channel:
        _ask(features_pb2_grpc.FeatureServiceStub(channel), 20)
    assert sorted(s.calls for s in servicers) == [0, 20]


def test_servers_age_connections_out_so_clients_resolve_again(monkeypatch):
    seen = []
    real = grpc.server

    def spy(*args, **kwargs):
        seen.append(dict(kwargs["options"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(grpc_server.grpc, "server", spy)
    server, _, _ = create_server([], host="127.0.0.1", port=0)
    server.stop(None)
    server, _, _ = create_server([], host="127.0.0.1", port=0, max_connection_age_s=60, max_connection_age_grace_s=5)
    server.stop(None)
    server, _, _ = create_server([], host="127.0.0.1", port=0, max_connection_age_s=None)
    server.stop(None)
    default, custom, forever = seen
    assert (
        60_000 <= default["grpc.max_connection_age_ms"] <= 600_000 and default["grpc.max_connection_age_grace_ms"] > 0
    )
    assert custom["grpc.max_connection_age_ms"] == 60_000 and custom["grpc.max_connection_age_grace_ms"] == 5_000
    assert "grpc.max_connection_age_ms" not in forever
