"""Builds and runs the inference server: artifact + feature service address -> gRPC server."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health

from recsys.artifact import ItemIndex, read_manifest, verify_files
from recsys.grpc_server import ServiceBinding, create_server, run_until_signal, set_serving
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
    feature_timeout_s: float = 1.0,
) -> Recommender:
    """Reads and checks the artifact, opens the model on `device`, warms it up."""
    manifest = read_manifest(artifact_dir)
    verify_files(artifact_dir, manifest)
    session = ModelSession(artifact_dir, manifest, device=device, threads=threads)
    session.warm_up()
    index = ItemIndex.read(artifact_dir)
    client = FeatureClient(features_target, timeout_s=feature_timeout_s)
    return Recommender(manifest, index, session, client, max_k=max_k)


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
) -> tuple[grpc.Server, int, health.HealthServicer, Recommender]:
    """Loads the model, then starts a server whose health turns SERVING once the model is checked."""
    recommender = load_recommender(artifact_dir, features_target, device=device, threads=threads, max_k=max_k)
    server, bound, health_servicer = create_server(
        [ServiceBinding(InferenceServicer(recommender), inference_pb2_grpc.add_InferenceServiceServicer_to_server, SERVICE_NAME)],
        host=host,
        port=port,
        max_workers=max_workers,
    )
    set_serving(health_servicer, [SERVICE_NAME], serving=True)
    return server, bound, health_servicer, recommender


def serve(artifact_dir: str, features_target: str, *, host: str, port: int, device: str, threads: int, max_k: int) -> None:
    server, bound, health_servicer, recommender = create_inference_server(
        artifact_dir, features_target, host=host, port=port, device=device, threads=threads, max_k=max_k
    )
    log.info(
        "inference server on %s:%d: model %s (%d items) on %s, features from %s",
        host, bound, recommender.model_version, recommender.manifest.num_items, device, features_target,
    )
    print(f"inference server listening on {host}:{bound} (model {recommender.model_version}, device {device})", flush=True)
    try:
        run_until_signal(server, health_servicer)
    finally:
        recommender.features.close()

