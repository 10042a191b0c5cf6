"""The feature client's pool of connections: calls are taken in turn over distinct
connections (so a multi-process feature service sees them on several workers), and closing
the client closes every one."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent import futures

import grpc
import pytest

from inference_server.feature_client import FeatureClient
from recsys.v1 import features_pb2, features_pb2_grpc


class _Items(features_pb2_grpc.FeatureServiceServicer):
    """Knows every item; records which connection (client address) each call came on."""

    def __init__(self) -> None:
        self.peers: Counter = Counter()
        self._lock = threading.Lock()

    def GetItemFeatures(self, request, context):
        with self._lock:
            self.peers[context.peer()] += 1
        return features_pb2.GetItemFeaturesResponse(
            items=[features_pb2.ItemFeatures(item_id=i, found=True) for i in request.item_ids]
        )


@pytest.fixture
def items_server():
    servicer = _Items()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    features_pb2_grpc.add_FeatureServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


@pytest.mark.parametrize("channels", [1, 3])
def test_calls_take_the_connections_in_turn(items_server, channels):
    target, servicer = items_server
    client = FeatureClient(target, channels=channels, combine_users=False)
    try:
        for n in range(2 * channels):
            assert client.get_items([f"i{n}"]) == {f"i{n}": {}}
    finally:
        client.close()
    assert sorted(servicer.peers.values()) == [2] * channels  # each connection, twice


def test_close_closes_every_connection(items_server):
    target, _ = items_server
    client = FeatureClient(target, channels=2)
    client.close()
    with pytest.raises(ValueError):  # grpcio refuses calls on a closed channel
        client.channels[1].unary_unary("/x.Y/Z")(b"")


def test_no_connection_is_refused():
    with pytest.raises(ValueError, match="channels"):
        FeatureClient("127.0.0.1:1", channels=0)
