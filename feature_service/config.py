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

__all__ = ["DEFAULT_PORT", "STORE_FILE", "FeatureServiceConfig", "default_store"]

DEFAULT_PORT = 50051
STORE_FILE = "features.sqlite"  # the default store, beside the artifact (see default_store)


def default_store(artifact_dir: str | Path | None) -> str:
    """The store a run uses when none is named: `features.sqlite` in the artifact's parent
    folder, so the versions of one model share it and unrelated runs never do."""
    if artifact_dir is None:
        raise ValueError("name a store (--store URL): without --artifact there is no default store")
    return f"sqlite://{Path(artifact_dir).resolve().parent / STORE_FILE}"


@dataclass(frozen=True)
class FeatureServiceConfig:
    # What it serves.
    artifact_dir: str | Path | None = None  # load this artifact first (idempotent); None: serve the store as it is
    # sqlite://PATH, redis://HOST:PORT/DB or memory:// (feature_service.stores); None: default_store(artifact_dir)
    store_url: str | None = None
    load_mode: str = "add"  # loading into a store that holds another dataset: "add" refuses, "replace", "merge"

    # The gRPC server.
    host: str = "127.0.0.1"  # this machine only; "[::]": every interface, IPv6 and (dual-stack) IPv4
    port: int = DEFAULT_PORT  # 0: any free port (tests)
    security: ServerSecurity | None = None  # TLS / mutual TLS and accepted tokens; None: plaintext, no auth
    max_workers: int = 8  # threads serving unary calls at once
    max_streams: int | None = None  # streaming calls (reflection, health Watch) at once; None: max_workers // 4
    reflection: bool | None = None  # server reflection; None: only on loopback or behind tokens
    max_concurrent_rpcs: int | None = 512  # calls in flight beyond which new ones get RESOURCE_EXHAUSTED
    health_interval_s: float = 1.0  # seconds between pings of the store (health follows them)
    # Processes on one port (recsys.processes); None: one per core (at most 8), one for memory://
    processes: int | None = None

    # Operations.
    metrics_port: int | None = None  # serve Prometheus text over HTTP on this port; None: off
    metrics_host: str | None = None  # interface of the metrics endpoint; None: `host`
    access_log: bool = False  # one log line per call: method, status, ms, request id
