"""Builds and runs the inference server: artifact + feature service address -> gRPC server.

Health is SERVING only while the feature service answers with the model's feature schema:
`HealthWatch` asks for its schema hash at startup and every `health_interval_s`, and turns
health NOT_SERVING (with a log line saying why) on a mismatch or when it cannot be reached,
SERVING again once it can. Requests check the hash on every feature answer as well, so a
mismatch fails them with FAILED_PRECONDITION even between two checks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health

from recsys.artifact import ItemIndex, read_manifest, verify_files
from recsys.grpc_server import HealthWatch, ServiceBinding, create_server, run_until_signal
from recsys.security import ClientSecurity, ServerSecurity
from recsys.v1 import inference_pb2_grpc
from inference_server.feature_client import FeatureClient
from inference_server.pipeline import Recommender
from inference_server.servicer import InferenceServicer
from recsys.onnx_session import ModelSession

__all__ = ["SERVICE_NAME", "create_inference_server", "serve"]

log = logging.getLogger(__name__)
SERVICE_NAME = "recsys.v1.InferenceService"


def load_recommender(
    artifact_dir: str | Path, features_target: str, *, device: str = "cpu", threads: int = 1, max_k: int = 1000,
    feature_timeout_s: float = 1.0, retrieval_dir: str | Path | None = None, num_candidates: int = 200,
    feature_security: ClientSecurity | None = None,
) -> Recommender:
    """Reads and checks the artifact(s), opens the model(s) on `device`, warms them up.

    With `retrieval_dir`, that next-item model proposes `num_candidates` items per request and
    the model in `artifact_dir` (a rank or rating model) re-scores them: two-stage serving.
    """
    manifest = read_manifest(artifact_dir)
    client = FeatureClient(features_target, timeout_s=feature_timeout_s, expected_schema_hash=manifest.schema_hash,
                           security=feature_security)
    retrieval = None
    if retrieval_dir is not None:
        retrieval = _stage(retrieval_dir, client, device=device, threads=threads, max_k=max_k)
    return _stage(artifact_dir, client, device=device, threads=threads, max_k=max_k,
                  retrieval=retrieval, num_candidates=num_candidates)


def _stage(artifact_dir, client: FeatureClient, *, device: str, threads: int, max_k: int, **extra) -> Recommender:
    manifest = read_manifest(artifact_dir)
    verify_files(artifact_dir, manifest)
    session = ModelSession(artifact_dir, manifest, device=device, threads=threads)
    recommender = Recommender(manifest, ItemIndex.read(artifact_dir), session, client, max_k=max_k, **extra)
    recommender.warm_up()
    return recommender


def create_inference_server(
    artifact_dir: str | Path,
    features_target: str,
    *,
    host: str = "[::]",
    port: int = 0,
    device: str = "cpu",
    threads: int = 1,
    max_k: int = 1000,
    max_workers: int = 8,
    health_interval_s: float = 2.0,
    retrieval_dir: str | Path | None = None,
    num_candidates: int = 200,
    security: ServerSecurity | None = None,
    feature_security: ClientSecurity | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer, Recommender]:
    """Loads the model, then starts a server whose health is SERVING while the feature
    service answers with the model's schema (checked once before returning).

    `security`: this server's TLS and accepted tokens; `feature_security`: the TLS and token
    of its channel to the feature service."""
    recommender = load_recommender(artifact_dir, features_target, device=device, threads=threads, max_k=max_k,
                                   retrieval_dir=retrieval_dir, num_candidates=num_candidates,
                                   feature_security=feature_security)
    try:
        server, bound, health_servicer = create_server(
            [ServiceBinding(InferenceServicer(recommender), inference_pb2_grpc.add_InferenceServiceServicer_to_server, SERVICE_NAME)],
            host=host,
            port=port,
            max_workers=max_workers,
            security=security,
        )
    except BaseException:
        recommender.features.close()
        raise
    features = recommender.features
    watch = HealthWatch(features.check_schema, health_servicer, [SERVICE_NAME], health_interval_s,
                        what=f"feature service at {features.target} with schema {features.expected_schema_hash}")
    watch.check()
    watch.start()
    return server, bound, health_servicer, recommender


def serve(artifact_dir: str, features_target: str, *, host: str, port: int, device: str, threads: int, max_k: int,
          retrieval_dir: str | None = None, num_candidates: int = 200, security: ServerSecurity | None = None,
          feature_security: ClientSecurity | None = None) -> None:
    security = security or ServerSecurity()
    server, bound, health_servicer, recommender = create_inference_server(
        artifact_dir, features_target, host=host, port=port, device=device, threads=threads, max_k=max_k,
        retrieval_dir=retrieval_dir, num_candidates=num_candidates, security=security,
        feature_security=feature_security,
    )
    feature_tls = "TLS" if feature_security is not None and feature_security.tls is not None else "plaintext"
    log.info(
        "inference server on %s:%d (%s): model %s (%d items) on %s, features from %s (%s)",
        host, bound, security.describe(), recommender.model_version, recommender.manifest.num_items, device,
        features_target, feature_tls,
    )
    print(f"inference server listening on {host}:{bound} (model {recommender.model_version}, device {device})", flush=True)
    try:
        run_until_signal(server, health_servicer)
    finally:
        recommender.features.close()

