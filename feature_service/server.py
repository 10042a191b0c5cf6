"""Builds the feature server from a `FeatureServiceConfig` (feature_service/config.py): a store
URL and, optionally, an artifact directory.

`start_server(config)` starts it; `serve(config)` is what the CLI calls (runs until SIGTERM or
SIGINT); `create_feature_server` takes the config's fields as keywords for tests (a memory://
store on port 0 by default). Startup
order: open the store, bind the port with health NOT_SERVING, load the artifact if one is given
(idempotent, so restarts over a persistent store are cheap; `load_mode` as `load_artifact`'s
`mode`), take the store's feature contract, then turn SERVING. A failure on the way stops the server and closes the
store before re-raising.

While it runs, a watcher pings the store every `health_interval_s`: health turns NOT_SERVING
when the store stops answering (requests then fail with UNAVAILABLE) and SERVING again when it
answers, with no restart; the backends reconnect by themselves.

Operations: every call is counted and timed (`recsys.metrics`; Prometheus text on
`metrics_port`) and runs under the caller's `x-request-id` (or a new one), which `access_log`
writes on one line per call, so a request can be followed from the inference server into this
service. At most `max_concurrent_rpcs` calls are in flight; more get RESOURCE_EXHAUSTED.

Processes: `serve` runs `processes` workers on one port under a supervisor (`recsys.processes`;
default one per core). They share the store, so a memory:// store (one per process) runs one
process. The supervisor loads the artifact once before starting them; each worker then serves
the store as it is.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health

from feature_service.config import FeatureServiceConfig, default_store
from feature_service.loader import load_artifact, stored_contract
from feature_service.service import FeatureServiceCore
from feature_service.servicer import SERVICE_NAME, FeatureServicer
from feature_service.stores import open_store
from recsys.artifact import read_manifest
from recsys.grpc_server import (
    HealthWatch,
    ServiceBinding,
    create_server,
    limit_malloc_arenas,
    run_until_signal,
    set_serving,
)
from recsys.metrics import ServiceMetrics
from recsys.processes import WorkerSlot, resolve_processes, supervise
from recsys.security import ServerSecurity
from recsys.tracing import setup_tracing
from recsys.v1 import features_pb2_grpc

__all__ = ["create_feature_server", "serve", "serve_worker", "start_server"]

log = logging.getLogger(__name__)


def start_server(
    config: FeatureServiceConfig, *, worker: WorkerSlot | None = None
) -> tuple[grpc.Server, int, health.HealthServicer, FeatureServiceCore]:
    """Starts a loaded, SERVING feature server; returns it, its port, health and core.

    `config.artifact_dir=None` serves what the store holds (`FailedPrecondition` if no artifact
    was ever loaded into it). The caller owns shutdown: `server.stop(grace)` then
    `core.close()` (closes the store and ends the store watcher). Raises `FailedPrecondition`
    for a bad artifact, `ValueError` for a bad store URL, `StoreUnavailable` for a store that
    cannot be reached, `ValueError` for unreadable certificates. `core.metrics` is the server's
    `ServiceMetrics` (its HTTP endpoint, with `metrics_port`, closes with the core). `worker`:
    this process's slot among several sharing the port (`recsys.processes`).
    """
    c = config
    manifest = read_manifest(c.artifact_dir) if c.artifact_dir is not None else None
    store_url = c.store_url or default_store(c.artifact_dir)
    store = open_store(store_url)
    server: grpc.Server | None = None
    metrics = ServiceMetrics(worker=None if worker is None else worker.index)
    try:
        if manifest is not None:
            report = load_artifact(store, c.artifact_dir, mode=c.load_mode)
            log.info("loaded %s from %s into %s: %s", manifest.model_version, c.artifact_dir, store_url, report)
        core = FeatureServiceCore(store, stored_contract(store))
        binding = ServiceBinding(
            FeatureServicer(core), features_pb2_grpc.add_FeatureServiceServicer_to_server, SERVICE_NAME
        )
        server, bound, health_servicer = create_server(
            [binding],
            host=c.host,
            port=c.port,
            max_workers=c.max_workers,
            max_streams=c.max_streams,
            reflection=c.reflection,
            security=c.security,
            max_concurrent_rpcs=c.max_concurrent_rpcs,
            interceptors=[metrics.interceptor(access_log=c.access_log)],
            reuse_port=worker is not None,
            peers=worker,
        )
        core.metrics = metrics
        core.metrics_port = (
            metrics.serve_http(c.metrics_port, c.metrics_host or c.host) if c.metrics_port is not None else None
        )
    except BaseException:
        if server is not None:
            server.stop(None)
        store.close()
        raise
    set_serving(health_servicer, [SERVICE_NAME], serving=True)

    def ping() -> None:
        core.ping()
        if core.refresh_contract():
            log.info("feature contract is now %s: %s", core.contract_hash, core.contract.to_json())

    watch = HealthWatch(ping, health_servicer, [SERVICE_NAME], c.health_interval_s, what="feature store")
    watch.serving = True  # the load above just read and wrote the store
    watch.start()
    core.on_close(watch.stop)
    core.on_close(metrics.close)
    return server, bound, health_servicer, core


def create_feature_server(
    artifact_dir: str | Path | None, store_url: str = "memory://", *, port: int = 0, **fields
) -> tuple[grpc.Server, int, health.HealthServicer, FeatureServiceCore]:
    """`start_server` with `FeatureServiceConfig` fields as keywords (tests: memory://, port 0)."""
    return start_server(FeatureServiceConfig(artifact_dir=artifact_dir, store_url=store_url, port=port, **fields))


def serve(config: FeatureServiceConfig) -> None:
    """Runs the feature server until SIGTERM/SIGINT, then drains and closes the store. With
    several processes, a supervisor runs them (`recsys.processes`); SystemExit on its failure."""
    store_url = config.store_url or default_store(config.artifact_dir)
    single = "a memory:// store lives in one process" if store_url.startswith("memory:") else None
    processes = resolve_processes(config.processes, single=single)
    if processes == 1:
        _serve(config, None)
        return
    if config.artifact_dir is not None:  # once, here, rather than N times at once in the workers
        store = open_store(store_url)
        try:
            manifest = read_manifest(config.artifact_dir)
            report = load_artifact(store, config.artifact_dir, mode=config.load_mode)
            log.info("loaded %s from %s into %s: %s", manifest.model_version, config.artifact_dir, store_url, report)
        finally:
            store.close()
    workers = dataclasses.replace(config, artifact_dir=None, store_url=store_url, processes=processes)
    code = supervise(serve_worker, workers, processes, name="feature service")
    if code:
        raise SystemExit(code)


def serve_worker(config: FeatureServiceConfig, worker: WorkerSlot) -> None:
    """One of several processes on one port (`recsys.processes.supervise` runs it)."""
    _serve(config, worker)


def _serve(config: FeatureServiceConfig, worker: WorkerSlot | None) -> None:
    limit_malloc_arenas()  # before any thread starts
    setup_tracing("recsys-features")  # a no-op unless OTEL_TRACES_EXPORTER asks for traces
    security = config.security or ServerSecurity()
    server, bound, health_servicer, core = start_server(config, worker=worker)
    metrics = f", metrics on :{core.metrics_port}" if core.metrics_port else ""
    log.info(
        "feature service%s on %s:%d (%s; contract %s, store %s%s)",
        "" if worker is None else f" worker {worker.index}",
        config.host,
        bound,
        security.describe(),
        core.contract_hash,
        config.store_url or default_store(config.artifact_dir),
        metrics,
    )
    if worker is None:  # with several processes, the supervisor announces the port
        print(f"feature service listening on {config.host}:{bound} (contract {core.contract_hash})", flush=True)
    try:
        run_until_signal(server, health_servicer)
    finally:
        core.close()
