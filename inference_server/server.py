"""Builds and runs the inference server from an `InferenceConfig` (inference_server/config.py):
a model (artifact directory or repository) + the feature service's address -> gRPC server.

`start_server(config)` starts it and returns the `InferenceService`; `serve(config)` is what the
CLI calls (runs until SIGTERM/SIGINT). `start_inference_service` and `create_inference_server`
take the config's fields as keywords (port 0 by default) for tests.

Model: `artifact_dir` serves one artifact; `repo` + `model` serve a versioned model repository
(`inference_server.model_repository`): the newest version that passes its checks, or a pinned
`version`; with `watch_interval_s` > 0 new versions are picked up as they are published, and the
AdminService on the same port loads, pins and rolls back versions. Every response names the
version that produced it.

Health follows the feature service: `HealthWatch` asks for its feature contract at startup and
every `health_interval_s`. When it no longer serves a raw feature the served model reads (or
serves it with another kind), the server turns NOT_SERVING (requests fail with
FAILED_PRECONDITION: scoring missing features would be wrong). When the feature
service cannot be reached, a server with `degrade=True` (the default) stays SERVING and answers
from fallbacks marked `degraded` (see inference_server/pipeline.py); the health entry
"recsys.v1.FeatureService" and the metric `recsys_feature_service_up` say the dependency is
down. With `degrade=False` the server turns NOT_SERVING and requests fail with UNAVAILABLE.

Load: at most `max_concurrent_rpcs` calls are in flight (running or queued); more are refused
with RESOURCE_EXHAUSTED at once. `request_timeout_s` bounds each call's feature fetch even when
the caller set no deadline. Metrics: Prometheus text on `metrics_port` (`recsys.metrics`).

Processes: `serve` runs `processes` workers on one port under a supervisor (`recsys.processes`;
default one per core, but one for a model repository). Each worker loads the model and watches
the repository itself, so a new version reaches every worker; the AdminService's calls that
change versions or rollouts would change one worker only, so with several processes they are
refused with FAILED_PRECONDITION (publish versions to the repository instead). ONNX Runtime
threads per worker are capped so that processes x threads <= cores.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2

from inference_server.config import InferenceConfig
from inference_server.feature_client import FeatureClient
from inference_server.local_features import LocalFeatures
from inference_server.model_repository import ModelManager, ServedModel
from inference_server.pipeline import Recommender
from inference_server.repository import ModelRepository
from inference_server.rollout import RolloutCollector
from inference_server.servicer import AdminServicer, InferenceServicer
from inference_server.speed import SpeedOptions, open_model
from recsys.artifact import ItemIndex, read_manifest, read_user_index, verify_files
from recsys.errors import FailedPrecondition, RecsysError, Unavailable
from recsys.grpc_server import HealthWatch, ServiceBinding, create_server, limit_malloc_arenas, run_until_signal
from recsys.metrics import InferenceMetrics
from recsys.processes import WorkerSlot, resolve_processes, supervise, threads_per_process
from recsys.security import ServerSecurity
from recsys.tracing import setup_tracing
from recsys.v1 import admin_pb2_grpc, inference_pb2_grpc

__all__ = [
    "ADMIN_SERVICE_NAME",
    "FEATURES_HEALTH_NAME",
    "SERVICE_NAME",
    "InferenceService",
    "create_inference_server",
    "serve",
    "serve_worker",
    "start_inference_service",
    "start_server",
]

log = logging.getLogger(__name__)
SERVICE_NAME = "recsys.v1.InferenceService"
ADMIN_SERVICE_NAME = "recsys.v1.AdminService"
FEATURES_HEALTH_NAME = "recsys.v1.FeatureService"  # health entry mirroring the dependency


def _stage(
    artifact_dir,
    client: FeatureClient,
    *,
    device: str,
    threads: int,
    max_k: int,
    speed: SpeedOptions | None = None,
    on_failure=None,
    **extra,
) -> Recommender:
    """Reads and checks one artifact, opens its model on `device` (tuned, batched and with ANN
    retrieval per `speed`), warms it up."""
    manifest = read_manifest(artifact_dir)
    verify_files(artifact_dir, manifest)
    session, ann = open_model(artifact_dir, manifest, device=device, threads=threads, speed=speed)
    if ann is not None:
        extra["ann"] = ann
    if any(i.source == "user.id" for i in manifest.inputs):
        extra["user_index"] = read_user_index(artifact_dir)
    recommender = Recommender(manifest, ItemIndex.read(artifact_dir), session, client, max_k=max_k, **extra)
    recommender.on_failure = on_failure
    recommender.warm_up()
    return recommender


@dataclass
class InferenceService:
    """A started inference server and what it owns; `stop()` releases all of it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    manager: ModelManager
    metrics: InferenceMetrics
    watch: HealthWatch
    metrics_port: int | None = None

    @property
    def recommender(self) -> Recommender:
        return self.manager.current.recommender

    def stop(self, grace_s: float | None = None) -> None:
        self.server.stop(grace_s).wait()
        self.close()

    def close(self) -> None:
        self.manager.stop()
        self.watch.stop()
        self.metrics.close()
        self.manager.features.close()


def _feature_source(c: InferenceConfig) -> FeatureClient | LocalFeatures:
    """Where users' and items' features come from: the feature service over gRPC, or the store
    it writes, read in this process (`feature_store`)."""
    if c.feature_store is None:
        return FeatureClient(
            c.features_target,
            timeout_s=c.feature_timeout_s,
            security=c.feature_security,
            max_message_bytes=c.max_message_bytes,
            channels=c.feature_channels,
        )
    return LocalFeatures(c.open_feature_store(c.feature_store), c.feature_store, timeout_s=c.feature_timeout_s)


def start_server(config: InferenceConfig, *, worker: WorkerSlot | None = None) -> InferenceService:
    """Loads the model, then starts the server; health is checked once before returning.

    The model is `config.artifact_dir`, or `config.model` of `config.repo` (optionally a pinned
    `version`). With `retrieval_dir`, that next-item model proposes `num_candidates` items per
    request and the served model (a rank or rating model) re-scores them: two-stage serving;
    hot swaps change the served model, not the retrieval stage. `security`: this server's TLS
    and accepted tokens; `feature_security`: the TLS and token of its channel to the feature
    service. ValueError for an ambiguous model source (`InferenceConfig.check`). `worker`: this
    process's slot among several sharing the port (`recsys.processes`).
    """
    c = config
    c.check()
    client = _feature_source(c)
    metrics = InferenceMetrics(worker=None if worker is None else worker.index)
    client.on_call = metrics.feature_call
    client.on_oversize = lambda what, n: metrics.failure(f"oversize_{what}", n)
    try:
        retrieval = None
        if c.retrieval_dir is not None:
            retrieval = _stage(
                c.retrieval_dir,
                client,
                device=c.device,
                threads=c.threads,
                max_k=c.max_k,
                degrade=c.degrade,
                speed=c.speed,
                on_failure=metrics.failure,
            )
            _time_runs(retrieval, metrics)

        def build(path: Path) -> Recommender:
            recommender = _stage(
                path,
                client,
                device=c.device,
                threads=c.threads,
                max_k=c.max_k,
                max_candidates=c.max_candidates,
                retrieval=retrieval,
                num_candidates=c.num_candidates,
                degrade=c.degrade,
                speed=c.speed,
                on_failure=metrics.failure,
            )
            _time_runs(recommender, metrics)
            return recommender

        def changed(served: ServedModel) -> None:
            metrics.model_changed(served.label, served.version)

        manager = ModelManager(
            build,
            client,
            artifact_dir=c.artifact_dir,
            repository=ModelRepository(c.repo) if c.repo is not None else None,
            model=c.model,
            version=c.version,
            on_change=changed,
            on_reject=metrics.model_rejected,
            auto_rollout=c.rollout,
            operator_refusal=None if worker is None else _ADMIN_REFUSAL.format(n=worker.count),
        )
        bindings = [
            ServiceBinding(
                InferenceServicer(manager, request_timeout_s=c.request_timeout_s, on_degraded=metrics.degraded_answer),
                inference_pb2_grpc.add_InferenceServiceServicer_to_server,
                SERVICE_NAME,
            ),
            ServiceBinding(
                AdminServicer(manager), admin_pb2_grpc.add_AdminServiceServicer_to_server, ADMIN_SERVICE_NAME
            ),
        ]
        server, bound, health_servicer = create_server(
            bindings,
            host=c.host,
            port=c.port,
            max_workers=c.max_workers,
            max_streams=c.max_streams,
            reflection=c.reflection,
            security=c.security,
            max_concurrent_rpcs=c.max_concurrent_rpcs,
            max_message_bytes=c.max_message_bytes,
            interceptors=[metrics.interceptor(access_log=c.access_log)],
            reuse_port=worker is not None,
            peers=worker,
        )
    except BaseException:
        client.close()
        raise
    metrics.watch_batches(lambda: _batch_stats(manager.current.recommender) if manager.serving else None)
    metrics.registry.register(RolloutCollector(lambda: manager.rollout))
    bound_metrics = metrics.serve_http(c.metrics_port, c.metrics_host or c.host) if c.metrics_port is not None else None
    watch = HealthWatch(
        _probe(manager, health_servicer, metrics, c.degrade),
        health_servicer,
        [SERVICE_NAME, ADMIN_SERVICE_NAME],
        c.health_interval_s,
        what=client.name,
    )
    watch.check()
    watch.start()
    manager.start_watch(c.watch_interval_s)
    return InferenceService(server, bound, health_servicer, manager, metrics, watch, bound_metrics)


def start_inference_service(
    artifact_dir: str | Path | None, features_target: str, *, port: int = 0, **fields
) -> InferenceService:
    """`start_server` with `InferenceConfig` fields as keywords (tests: port 0, any free port)."""
    return start_server(
        InferenceConfig(artifact_dir=artifact_dir, features_target=features_target, port=port, **fields)
    )


_ADMIN_REFUSAL = (
    "this server runs {n} processes and each would change alone: publish the version to the model "
    "repository (every process follows it), or run one process (--processes 1) to use the admin calls"
)


def _time_runs(recommender: Recommender, metrics: InferenceMetrics) -> None:
    """Times the recommender's ONNX Runtime runs (after its warm-up) and its batching queue."""
    session = recommender.session
    batcher = getattr(session, "batcher", None)
    if batcher is not None and hasattr(batcher, "on_queue"):
        batcher.on_queue = metrics.batch_queue.observe
    session = getattr(session, "inner", session)  # under a BatchingSession
    if hasattr(session, "on_run"):
        session.on_run = metrics.model_run(recommender.manifest.model_version)


def _batch_stats(recommender: Recommender) -> tuple[int, int] | None:
    batcher = getattr(recommender.session, "batcher", None)
    return None if batcher is None else (batcher.batches, batcher.batch_rows)


def _probe(manager: ModelManager, health_servicer: health.HealthServicer, metrics: InferenceMetrics, degrade: bool):
    """One health round: the feature service answers and serves what the served model reads. A
    service that cannot be reached fails the round only without `degrade` (see the module
    docstring)."""
    client = manager.features
    state = {"up": None}

    def mark(up: bool) -> None:
        if up == state["up"]:
            return
        if degrade and (state["up"] is not None or not up):
            log.warning(
                "%s %s",
                client.name,
                "answers again: full answers" if up else "cannot be reached: answering degraded (fallbacks)",
            )
        state["up"] = up
        metrics.feature_up.set(1 if up else 0)
        health_servicer.set(
            FEATURES_HEALTH_NAME,
            health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING,
        )

    def probe() -> None:
        if not manager.serving:  # an empty repository: NOT_SERVING until its first version loads
            raise FailedPrecondition(f"no version of model {manager.model!r} has loaded yet")
        try:
            client.check_compatible(manager.current.recommender.manifest.needs)
        except Unavailable:
            mark(False)
            if not degrade:
                raise
            return
        except RecsysError:  # it answers, without a feature the model reads
            mark(True)
            raise
        mark(True)

    return probe


def create_inference_server(
    artifact_dir: str | Path | None, features_target: str, **fields
) -> tuple[grpc.Server, int, health.HealthServicer, Recommender]:
    """`start_inference_service` returning (server, port, health, recommender at start); the
    caller stops the server and closes `recommender.features`."""
    service = start_inference_service(artifact_dir, features_target, **fields)
    return service.server, service.port, service.health, service.recommender


def serve(config: InferenceConfig) -> None:
    """Runs the inference server until SIGTERM/SIGINT, then drains (see `start_server`). With
    several processes, a supervisor runs them (`recsys.processes`); SystemExit on its failure."""
    single = "a model repository's admin calls change one process" if config.repo is not None else None
    processes = resolve_processes(config.processes, single=single if config.processes is None else None)
    if processes == 1:
        _serve(config, None)
        return
    threads = threads_per_process(config.threads, processes)
    if threads < config.threads:
        log.warning("%d processes x %d threads exceed the cores: %d ONNX Runtime threads each", processes,
                    config.threads, threads)  # fmt: skip
    speed = config.speed
    if speed is not None and speed.tuning is not None and speed.tuning.intra_threads > threads:
        speed = dataclasses.replace(speed, tuning=dataclasses.replace(speed.tuning, intra_threads=threads))
    sized = dataclasses.replace(config, threads=threads, speed=speed, processes=processes)
    code = supervise(serve_worker, sized, processes, name="inference server")
    if code:
        raise SystemExit(code)


def serve_worker(config: InferenceConfig, worker: WorkerSlot) -> None:
    """One of several processes on one port (`recsys.processes.supervise` runs it)."""
    _serve(config, worker)


def _serve(config: InferenceConfig, worker: WorkerSlot | None) -> None:
    limit_malloc_arenas()  # before any thread starts
    setup_tracing("recsys-inference")  # a no-op unless OTEL_TRACES_EXPORTER asks for traces
    security = config.security or ServerSecurity()
    service = start_server(config, worker=worker)
    features = service.manager.features.name
    if config.feature_store is None:
        tls = config.feature_security is not None and config.feature_security.tls is not None
        features += " (TLS)" if tls else " (plaintext)"
    served = service.manager.current
    log.info(
        "inference server%s on %s:%d (%s): model %s (%s items) on %s, features from %s%s",
        "" if worker is None else f" worker {worker.index}",
        config.host,
        service.port,
        security.describe(),
        served.label or "none yet (waiting for a first version)",
        served.recommender.manifest.num_items if served.recommender is not None else 0,
        config.device,
        features,
        f", metrics on :{service.metrics_port}" if service.metrics_port else "",
    )
    if worker is None:  # with several processes, the supervisor announces the port
        print(
            f"inference server listening on {config.host}:{service.port} (model {served.label or 'none yet'}, "
            f"device {config.device})",
            flush=True,
        )
    try:
        run_until_signal(service.server, service.health)
    finally:
        service.close()
