"""SIGKILL the feature service while a client streams events into it: every event whose
RecordInteractions call returned OK is in the store afterwards (SQLite default; Redis with AOF,
where Redis itself is SIGKILLed and restarted from its append-only file as well)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from feature_service.stores import open_store
from recsys.client import free_port, wait_serving
from recsys.v1 import features_pb2, features_pb2_grpc, types_pb2


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_sigkill_loses_no_acknowledged_event(
    backend: str, artifact_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    redis_server = request.getfixturevalue("redis_server") if backend == "redis" else None
    url = redis_server.url if redis_server else f"sqlite://{tmp_path}/features.db"
    target = f"127.0.0.1:{free_port()}"
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recsys.cli",
            "serve",
            "features",
            "--artifact",
            str(artifact_dir),
            "--store",
            url,
            "--host",
            "127.0.0.1",
            "--port",
            target.rsplit(":", 1)[1],
            # One process: the SIGKILL below must hit the one that writes, not a supervisor.
            "--processes",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    acknowledged: list[types_pb2.Interaction] = []

    def stream() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = features_pb2_grpc.FeatureServiceStub(channel)
            for n in range(100_000):
                events = [
                    types_pb2.Interaction(user_id=f"w{k}", item_id=f"i{n}", timestamp=1_000 + n, event_id=f"e{n}-{k}")
                    for k in range(5)
                ]
                try:
                    stub.RecordInteractions(features_pb2.RecordInteractionsRequest(interactions=events), timeout=5)
                except grpc.RpcError:
                    return  # the service is gone: this call was not acknowledged
                acknowledged.extend(events)

    try:
        wait_serving(target, service)
        writer = threading.Thread(target=stream)
        writer.start()
        while len(acknowledged) < 100 and writer.is_alive():
            time.sleep(0.01)
        service.kill()  # SIGKILL, mid-stream: the next call fails, the last OK one must be stored
        writer.join(30)
    finally:
        if service.poll() is None:
            service.kill()
        service.communicate(timeout=30)
    assert len(acknowledged) >= 100
    if redis_server is not None:
        redis_server.kill()
        redis_server.start()  # replays its append-only file
    with open_store(url) as store:
        held = {
            (r.user_id, item, ts)
            for r in store.get_users([f"w{k}" for k in range(5)], 1000)
            for item, ts in zip(r.history, r.history_timestamps)
        }
    missing = [e for e in acknowledged if (e.user_id, e.item_id, e.timestamp) not in held]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged events lost"
