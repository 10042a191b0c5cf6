"""Builds the feature server from a store URL and, optionally, an artifact directory.

`create_feature_server` is what tests call (port 0); `serve` is what the CLI calls. Startup
order: open the store, bind the port with health NOT_SERVING, load the artifact if one is given
(idempotent, so restarts over a persistent store are cheap) or else take the schema the store
was last loaded with, then turn SERVING. A failure on the way stops the server and closes the
store before re-raising.

While it runs, a watcher pings the store every `health_interval_s`: health turns NOT_SERVING
when the store stops answering (requests then fail with UNAVAILABLE) and SERVING again when it
answers, with no restart; the backends reconnect by themselves.

Operations: every call is counted and timed (`recsys.metrics`; Prometheus text on
`metrics_port`) and runs under the caller's `x-request-id` (or a new one), which `access_log`
writes on one line per call, so a request can be followed from the inference server into this
service. At most `max_concurrent_rpcs` calls are in flight; more get RESOURCE_EXHAUSTED.
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
from recsys.metrics import ServiceMetrics
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
    max_concurrent_rpcs: int | None = 512,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
    access_log: bool = False,
) -> tuple[grpc.Server, int, health.HealthServicer, FeatureServiceCore]:
    """Starts a loaded, SERVING feature server; returns it, its port, health and core.

    `artifact_dir=None` serves the schema of the artifact last loaded into the store
    (`FailedPrecondition` if none was). The caller owns shutdown: `server.stop(grace)` then
    `core.close()` (closes the store and ends the store watcher). Raises `FailedPrecondition`
    for a bad artifact, `ValueError` for a bad store URL, `StoreUnavailable` for a store that
    cannot be reached, `ValueError` for unreadable certificates. `security`: TLS / mutual TLS
    and accepted tokens (`recsys.security`). `core.metrics` is the server's `ServiceMetrics`
    (its HTTP endpoint, with `metrics_port`, closes with the core).
    """
    manifest = read_manifest(artifact_dir) if artifact_dir is not None else None
    store = open_store(store_url)
    server: grpc.Server | None = None
    metrics = ServiceMetrics()
    try:
        schema = manifest.schema if manifest is not None else stored_schema(store)
        core = FeatureServiceCore(store, schema)
        binding = ServiceBinding(
            FeatureServicer(core), features_pb2_grpc.add_FeatureServiceServicer_to_server, SERVICE_NAME
        )
        server, bound, health_servicer = create_server(
            [binding], host=host, port=port, max_workers=max_workers, security=security,
            max_concurrent_rpcs=max_concurrent_rpcs, interceptors=[metrics.interceptor(access_log=access_log)],
        )
        if manifest is not None:
            report = load_artifact(store, artifact_dir)
            log.info("loaded %s from %s into %s: %s", manifest.model_version, artifact_dir, store_url, report)
        core.metrics = metrics
        core.metrics_port = metrics.serve_http(metrics_port, metrics_host) if metrics_port is not None else None
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
    core.on_close(metrics.close)
    return server, bound, health_servicer, core


def serve(artifact_dir: str | Path | None, store_url: str, host: str = "[::]", port: int = 50051,
          security: ServerSecurity | None = None, **options) -> None:
    """Runs the feature server until SIGTERM/SIGINT, then drains and closes the store;
    `options` go to `create_feature_server` (metrics_port, access_log, max_concurrent_rpcs)."""
    security = security or ServerSecurity()
    server, bound, health_servicer, core = create_feature_server(artifact_dir, store_url, host, port,
                                                                  security=security, **options)
    metrics = f", metrics on :{core.metrics_port}" if core.metrics_port else ""
    log.info("feature service on %s:%d (%s; schema %s, store %s%s)", host, bound, security.describe(),
             core.schema_hash, store_url, metrics)
    print(f"feature service listening on {host}:{bound} (schema {core.schema_hash})", flush=True)
    try:
        run_until_signal(server, health_servicer)
    finally:
        core.close()
