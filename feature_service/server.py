"""Builds the feature server from an artifact directory and a store URL.

`create_feature_server` is what tests call (port 0); `serve` is what the CLI calls. Startup
order: read the manifest, open the store, bind the port with health NOT_SERVING, load the
artifact (idempotent, so restarts over a persistent store are cheap), then turn SERVING.
A failure on the way stops the server and closes the store before re-raising.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health

from feature_service.loader import load_artifact
from feature_service.service import FeatureServiceCore
from feature_service.servicer import SERVICE_NAME, FeatureServicer
from feature_service.stores import open_store
from recsys.artifact import read_manifest
from recsys.grpc_server import ServiceBinding, create_server, run_until_signal, set_serving
from recsys.v1 import features_pb2_grpc

__all__ = ["create_feature_server", "serve"]

log = logging.getLogger(__name__)


def create_feature_server(
    artifact_dir: str | Path,
    store_url: str = "memory://",
    host: str = "[::]",
    port: int = 0,
    max_workers: int = 8,
) -> tuple[grpc.Server, int, health.HealthServicer, FeatureServiceCore]:
    """Starts a loaded, SERVING feature server; returns it, its port, health and core.

    The caller owns shutdown: `server.stop(grace)` then `core.close()` (closes the store).
    Raises `FailedPrecondition` for a bad artifact, `ValueError` for a bad store URL.
    """
    manifest = read_manifest(artifact_dir)
    store = open_store(store_url)
    server: grpc.Server | None = None
    try:
        core = FeatureServiceCore(store, manifest.schema)
        binding = ServiceBinding(
            FeatureServicer(core), features_pb2_grpc.add_FeatureServiceServicer_to_server, SERVICE_NAME
        )
        server, bound, health_servicer = create_server([binding], host=host, port=port, max_workers=max_workers)
        report = load_artifact(store, artifact_dir)
        log.info("loaded %s from %s into %s: %s", manifest.model_version, artifact_dir, store_url, report)
    except BaseException:
        if server is not None:
            server.stop(None)
        store.close()
        raise
    set_serving(health_servicer, [SERVICE_NAME], serving=True)
    return server, bound, health_servicer, core


def serve(artifact_dir: str | Path, store_url: str, host: str = "[::]", port: int = 50051) -> None:
    """Runs the feature server until SIGTERM/SIGINT, then drains and closes the store."""
    server, bound, health_servicer, core = create_feature_server(artifact_dir, store_url, host, port)
    log.info(
        "feature service on %s:%d (schema %s, store %s)", host, bound, core.schema_hash, store_url
    )
    try:
        run_until_signal(server, health_servicer)
    finally:
        core.close()
