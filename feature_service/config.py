"""What the feature service runs with: one frozen dataclass, every field defaulted.

`recsys serve features` builds it from its flags and hands it whole to `serve`; tests build it
(or pass its fields to `create_feature_server`) with a `memory://` store and port 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: this module stays free of grpc
    from recsys.security import ServerSecurity

__all__ = ["DEFAULT_PORT", "DEFAULT_STORE", "FeatureServiceConfig"]

DEFAULT_PORT = 50051
DEFAULT_STORE = "sqlite://recsys-features.sqlite"


@dataclass(frozen=True)
class FeatureServiceConfig:
    # What it serves.
    artifact_dir: str | Path | None = None  # load this artifact first (idempotent); None: the store's last one
    store_url: str = DEFAULT_STORE  # sqlite://PATH, redis://HOST:PORT/DB or memory:// (feature_service.stores)

    # The gRPC server.
    host: str = "[::]"  # every interface, IPv6 and (on dual-stack hosts) IPv4; 127.0.0.1: this machine only
    port: int = DEFAULT_PORT  # 0: any free port (tests)
    security: ServerSecurity | None = None  # TLS / mutual TLS and accepted tokens; None: plaintext, no auth
    max_workers: int = 8  # threads serving calls at once
    max_concurrent_rpcs: int | None = 512  # calls in flight beyond which new ones get RESOURCE_EXHAUSTED
    health_interval_s: float = 1.0  # seconds between pings of the store (health follows them)

    # Operations.
    metrics_port: int | None = None  # serve Prometheus text over HTTP on this port; None: off
    metrics_host: str = "0.0.0.0"  # interface of the metrics endpoint
    access_log: bool = False  # one log line per call: method, status, ms, request id
