"""What the inference server runs with: one frozen dataclass, every field defaulted.

`recsys serve inference` builds it from its flags and hands it whole to `serve`; tests build it
(or pass its fields to `start_inference_service`) with port 0. Validation that needs several
fields at once is `check()`; the server calls it before loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: this module stays free of grpc and ONNX Runtime
    from inference_server.speed import SpeedOptions
    from recsys.security import ClientSecurity, ServerSecurity

__all__ = ["DEFAULT_PORT", "InferenceConfig"]

DEFAULT_PORT = 50052


@dataclass(frozen=True)
class InferenceConfig:
    # The model: one artifact directory, or a model of a model repository (REPO/MODEL/VERSION/).
    artifact_dir: str | Path | None = None  # serve this artifact directory
    repo: str | Path | None = None  # or serve `model` from this repository, swapping in new versions
    model: str | None = None  # the model's name in `repo`
    version: int | None = None  # pin this version of `model`; None: the newest that passes its checks
    watch_interval_s: float = 2.0  # seconds between looks at `repo` for new versions; 0: admin RPC only
    retrieval_dir: str | Path | None = None  # two-stage: this next-item artifact proposes, the model re-scores
    num_candidates: int = 200  # candidates the retrieval stage proposes per request

    # The feature service this server reads users' histories and features from.
    features_target: str = "localhost:50051"  # HOST:PORT
    feature_timeout_s: float = 1.0  # the longest any one call to the feature service may take
    feature_security: ClientSecurity | None = None  # TLS and bearer token of that channel; None: plaintext
    degrade: bool = True  # answer from fallbacks (marked degraded) when it is down; False: UNAVAILABLE
    health_interval_s: float = 2.0  # seconds between checks of its health and schema

    # The gRPC server.
    host: str = "[::]"  # every interface, IPv6 and (on dual-stack hosts) IPv4; 127.0.0.1: this machine only
    port: int = DEFAULT_PORT  # 0: any free port (tests)
    security: ServerSecurity | None = None  # TLS / mutual TLS and accepted tokens; None: plaintext, no auth
    max_workers: int = 8  # threads serving calls at once
    max_concurrent_rpcs: int | None = 256  # calls in flight beyond which new ones get RESOURCE_EXHAUSTED
    max_message_bytes: int = 16 * 1024 * 1024  # largest request or response
    request_timeout_s: float | None = 1.0  # bounds each call's feature fetch when the caller set no deadline

    # Requests.
    max_k: int = 1000  # largest k a Recommend may ask for
    max_candidates: int = 10000  # most item_ids one Score may carry

    # Running the model.
    device: str = "cpu"  # cpu | cuda
    threads: int = 1  # ONNX Runtime intra-op threads
    speed: SpeedOptions | None = None  # tuning, micro-batching, ANN, variant; None: SpeedOptions()

    # Operations.
    metrics_port: int | None = None  # serve Prometheus text over HTTP on this port; None: off
    metrics_host: str = "0.0.0.0"  # interface of the metrics endpoint
    access_log: bool = False  # one log line per call: method, status, ms, request id

    def check(self) -> None:
        """ValueError when the model source is ambiguous or incomplete."""
        if (self.artifact_dir is None) == (self.repo is None):
            raise ValueError("serve an artifact directory or a model repository (repo and model), not both")
        if (self.repo is None) != (self.model is None) or (self.version is not None and self.repo is None):
            raise ValueError("a model repository needs a model name (and a pinned version needs both)")
