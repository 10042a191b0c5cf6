"""A tiny hand-written artifact (3 users, one without features; 4 items; 5 events) and a real
Redis for the Redis backend's tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.artifact import HISTORIES, ITEMS, MANIFEST, USERS, Manifest, ModelInput, write_jsonl
from recsys.client import free_port
from recsys.schema import FeatureKind, FeatureSchema, FeatureSpec

SCHEMA = FeatureSchema(
    user_features=(
        FeatureSpec("age", FeatureKind.NUMERIC, mean=30.0, std=10.0),
        FeatureSpec("gender", FeatureKind.CATEGORICAL, vocabulary=("F", "M")),
    ),
    item_features=(
        FeatureSpec("title", FeatureKind.TEXT),
        FeatureSpec("genres", FeatureKind.MULTI_CATEGORICAL, vocabulary=("Action", "Comedy", "Drama")),
    ),
    max_history=3,
    item_index_sha256="test-index",
)

HISTORY_ROWS = [
    # u1 has 4 events, one more than max_history; listed oldest first as the trainer writes them.
    {"user_id": "u1", "item_ids": ["i1", "i2", "i3", "i4"], "timestamps": [100, 200, 300, 400]},
    {"user_id": "u2", "item_ids": ["i2"], "timestamps": [150]},
]
USER_ROWS = [
    {"user_id": "u1", "features": {"age": 24, "gender": "M"}},
    {"user_id": "u3", "features": {"age": 53.5, "gender": "F"}},
]
ITEM_ROWS = [
    {"item_id": "i1", "features": {"title": "Toy Story (1995)", "genres": ["Comedy"]}},
    {"item_id": "i2", "features": {"title": "GoldenEye (1995)", "genres": ["Action"]}},
    {"item_id": "i3", "features": {"title": "Four Rooms (1995)", "genres": []}},
    {"item_id": "i4", "features": {"title": "Get Shorty (1995)", "genres": ["Action", "Comedy", "Drama"]}},
]


def write_artifact(path: Path, schema: FeatureSchema = SCHEMA) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        model_kind="sasrec",
        task="next_item",
        model_version="1",
        inputs=(ModelInput("item_seq", "user.history"),),
        output="scores",
        num_items=len(ITEM_ROWS),
        schema=schema,
        item_index_sha256=schema.item_index_sha256,
    )
    (path / MANIFEST).write_text(manifest.to_json())
    write_jsonl(path / HISTORIES, HISTORY_ROWS)
    write_jsonl(path / USERS, USER_ROWS)
    write_jsonl(path / ITEMS, ITEM_ROWS)
    return path


@pytest.fixture
def schema() -> FeatureSchema:
    return SCHEMA


@pytest.fixture
def artifact_dir(tmp_path: Path) -> Path:
    return write_artifact(tmp_path / "artifact")


# --- Redis: a real redis-server on loopback -------------------------------------------------
# Tests use RECSYS_TEST_REDIS_URL when it is set (CI starts one), else a throwaway server of
# their own. Without the redis-server binary they skip, unless RECSYS_REQUIRE_REDIS=1 (CI),
# which turns the skip into a failure.

REDIS_REQUIRED = os.environ.get("RECSYS_REQUIRE_REDIS") == "1"


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not installed (apt-get install -y redis-server)"
        if REDIS_REQUIRED:
            pytest.fail(f"{reason}, and RECSYS_REQUIRE_REDIS=1 requires the Redis tests to run")
        pytest.skip(reason)
    return path


class RedisServer:
    """A throwaway redis-server on a free loopback port with AOF on, its files in `directory`.

    `kill()` is SIGKILL; `start()` again restarts it on the same port from the same files.
    """

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}: {self.directory / 'redis.log'}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis for tests that only need one: each test uses its own key prefix (`redis_prefix`)."""
    external = os.environ.get("RECSYS_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_prefix(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A key prefix of this test's own, whose keys are deleted afterwards (the server may be shared)."""
    import redis

    prefix = f"test-{tmp_path.name}-{os.getpid()}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, for tests that kill or restart it."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
