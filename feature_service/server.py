"""Builds the feature server from a store URL and, optionally, an artifact directory.

`create_feature_server` is what tests call (port 0); `serve` is what the CLI calls. Startup
order: open the store, bind the port with health NOT_SERVING, load the artifact if one is given
(idempotent, so restarts over a persistent store are cheap) or else take the schema the store
was last loaded with, then turn SERVING. A failure on the way stops the server and closes the
store before re-raising.

While it runs, a watcher pings the store every `health_interval_s`: health turns NOT_SERVING
when the store stops answering (requests then fail with UNAVAILABLE) and SERVING again when it
answers, with no restart; the backends reconnect by themselves.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health

from feature_service.loader import load_artifact, stored_schema
from feature_service.service import FeatureServiceCore
from feature_service.servicer import SERVICE_NAME, FeatureServicer
from feature_service.stores import open_store
from recsys.artifact import read_manifest
from recsys.grpc_server import HealthWatch, ServiceBinding, create_server, run_until_signal, set_serving
from recsys.security import ServerSecurity
from recsys.v1 import features_pb2_grpc

__all__ = ["create_feature_server", "serve"]

log = logging.getLogger(__name__)


def create_feature_server(
    artifact_dir: str | Path | None,
    store_url: str = "memory://",
    host: str = "[::]",
    port: int = 0,
    max_workers: int = 8,
    health_interval_s: float = 1.0,
    security: ServerSecurity | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer, FeatureServiceCore]:
    """Starts a loaded, SERVING feature server; returns it, its port, health and core.

    `artifact_dir=None` serves the schema of the artifact last loaded into the store
    (`FailedPrecondition` if none was). The caller owns shutdown: `server.stop(grace)` then
    `core.close()` (closes the store and ends the store watcher). Raises `FailedPrecondition`
    for a bad artifact, `ValueError` for a bad store URL, `StoreUnavailable` for a store that
    cannot be reached, `ValueError` for unreadable certificates. `security`: TLS / mutual TLS
    and accepted tokens (`recsys.security`).
    """
    manifest = read_manifest(artifact_dir) if artifact_dir is not None else None
    store = open_store(store_url)
    server: grpc.Server | None = None
    try:
        schema = manifest.schema if manifest is not None else stored_schema(store)
        core = FeatureServiceCore(store, schema)
        binding = ServiceBinding(
            FeatureServicer(core), features_pb2_grpc.add_FeatureServiceServicer_to_server, SERVICE_NAME
        )
        server, bound, health_servicer = create_server(
            [binding], host=host, port=port, max_workers=max_workers, security=security
        )
        if manifest is not None:
            report = load_artifact(store, artifact_dir)
            log.info("loaded %s from %s into %s: %s", manifest.model_version, artifact_dir, store_url, report)
    except BaseException:
        if server is not None:
            server.stop(None)
        store.close()
        raise
    set_serving(health_servicer, [SERVICE_NAME], serving=True)
    watch = HealthWatch(core.ping, health_servicer, [SERVICE_NAME], health_interval_s, what="feature store")
    watch.serving = True  # the load above just read and wrote the store
    watch.start()
    core.on_close(watch.stop)
    return server, bound, health_servicer, core


def serve(artifact_dir: str | Path | None, store_url: str, host: str = "[::]", port: int = 50051,
          security: ServerSecurity | None = None) -> None:
    """Runs the feature server until SIGTERM/SIGINT, then drains and closes the store."""
    security = security or ServerSecurity()
    server, bound, health_servicer, core = create_feature_server(artifact_dir, store_url, host, port,
                                                                  security=security)
    log.info("feature service on %s:%d (%s; schema %s, store %s)", host, bound, security.describe(),
             core.schema_hash, store_url)
    print(f"feature service listening on {host}:{bound} (schema {core.schema_hash})", flush=True)
    try:
        run_until_signal(server, health_servicer)
    finally:
        core.close()
