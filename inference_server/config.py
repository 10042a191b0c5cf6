"""What the inference server runs with: one frozen dataclass, every field defaulted.

`recsys serve inference` builds it from its flags and hands it whole to `serve`; tests build it
(or pass its fields to `start_inference_service`) with port 0. Validation that needs several
fields at once is `check()`; the server calls it before loading anything. `RolloutLimits` and
`AutoRollout` configure rollouts (inference_server/rollout.py, docs/operations.md#rollouts).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: this module stays free of grpc and ONNX Runtime
    from inference_server.local_features import FeatureCore
    from inference_server.speed import SpeedOptions
    from recsys.security import ClientSecurity, ServerSecurity

__all__ = ["CANARY", "DEFAULT_PORT", "SHADOW", "AutoRollout", "InferenceConfig", "RolloutLimits"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 50052
CANARY, SHADOW = "canary", "shadow"  # rollout modes
DEFAULT_FRACTION = {CANARY: 0.05, SHADOW: 1.0}  # share of users a rollout covers, by mode


@dataclass(frozen=True)
class RolloutLimits:
    """Where a candidate is rolled back. Defaults < the artifact's manifest `training["rollout"]`
    < the StartRollout request's overrides."""

    max_error_rate: float = 0.01  # (errors + bad answers) / candidate answers above this
    # p99 latency of the latest candidate answers above this, and above twice the stable
    # version's p99 over the same time (a host slow for both is not the candidate's fault)
    max_p99_ms: float = 250.0
    # mean top-10 overlap with the stable version below this: a retrain shares much of its top
    # 10 with the version before; a broken one (wrong item order, a lost index) almost nothing
    min_overlap: float = 0.05
    min_requests: int = 20  # answers (and comparisons) needed before the three limits above apply
    max_consecutive_failures: int = 3  # failures in a row that roll back at once

    def merged(self, overrides: dict[str, Any] | None) -> RolloutLimits:
        """These limits with `overrides` (field -> value; None and unknown names ignored,
        with a warning for the latter: an artifact's limits must not stop it from loading)."""
        known = {f.name: f.type for f in dataclasses.fields(self)}
        values = {}
        for name, value in (overrides or {}).items():
            if name not in known:
                log.warning("rollout limit %r is unknown: ignored (known: %s)", name, ", ".join(known))
            elif value is not None:
                values[name] = int(value) if known[name] == "int" else float(value)
        return dataclasses.replace(self, **values)

    @classmethod
    def of_manifest(cls, training: dict[str, Any]) -> RolloutLimits:
        given = training.get("rollout")
        return cls().merged(given if isinstance(given, dict) else None)


@dataclass(frozen=True)
class AutoRollout:
    """How the watcher brings in a new version under policy `latest` (instead of swapping at
    once): a rollout in `mode` over `fraction` of users, promoted once it has stayed within
    its limits for `promote_after_s` seconds and `min_requests` answers (None: promoted only
    by an operator)."""

    mode: str = CANARY
    fraction: float = DEFAULT_FRACTION[CANARY]
    promote_after_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> AutoRollout | None:
        """ "none" -> None; "canary[:FRACTION[:SECONDS]]"; "shadow[:SECONDS]". ValueError otherwise."""
        parts = text.strip().lower().split(":")
        try:
            if parts == ["none"]:
                return None
            if parts[0] == CANARY and len(parts) <= 3:
                fraction = float(parts[1]) if len(parts) > 1 else DEFAULT_FRACTION[CANARY]
                after = float(parts[2]) if len(parts) > 2 else None
                rollout = cls(CANARY, fraction, after)
            elif parts[0] == SHADOW and len(parts) <= 2:
                rollout = cls(SHADOW, DEFAULT_FRACTION[SHADOW], float(parts[1]) if len(parts) > 1 else None)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"{text!r}: use none, canary[:FRACTION[:SECONDS]] or shadow[:SECONDS]") from None
        seconds_ok = rollout.promote_after_s is None or rollout.promote_after_s >= 0
        if not (0 < rollout.fraction <= 1 and seconds_ok):
            raise ValueError(f"{text!r}: the fraction is in (0, 1] and the seconds are >= 0")
        return rollout


@dataclass(frozen=True)
class InferenceConfig:
    # The model: one artifact directory, or a model of a model repository (REPO/MODEL/VERSION/).
    artifact_dir: str | Path | None = None  # serve this artifact directory
    repo: str | Path | None = None  # or serve `model` from this repository, swapping in new versions
    model: str | None = None  # the model's name in `repo`
    version: int | None = None  # pin this version of `model`; None: the newest that passes its checks
    watch_interval_s: float = 2.0  # seconds between looks at `repo` for new versions; 0: admin RPC only
    rollout: AutoRollout | None = None  # a new version found by the watcher: rolled out so; None: swapped at once
    retrieval_dir: str | Path | None = None  # two-stage: this next-item artifact proposes, the model re-scores
    num_candidates: int = 200  # candidates the retrieval stage proposes per request

    # The feature service this server reads users' histories and features from.
    features_target: str = "localhost:50051"  # HOST:PORT
    # Or read the store the feature service writes, in this process (inference_server/local_features.py):
    # its URL, and the function that opens it (a module-level one: it travels to worker processes).
    feature_store: str | None = None
    open_feature_store: Callable[[str], FeatureCore] | None = None
    feature_timeout_s: float = 1.0  # the longest any one call to the feature service may take
    feature_channels: int = 2  # connections to the feature service, used in turn (one reaches one of its workers)
    feature_security: ClientSecurity | None = None  # TLS and bearer token of that channel; None: plaintext
    degrade: bool = True  # answer from fallbacks (marked degraded) when it is down; False: UNAVAILABLE
    health_interval_s: float = 2.0  # seconds between checks of its health and schema

    # The gRPC server.
    host: str = "127.0.0.1"  # this machine only; "[::]": every interface, IPv6 and (dual-stack) IPv4
    port: int = DEFAULT_PORT  # 0: any free port (tests)
    security: ServerSecurity | None = None  # TLS / mutual TLS and accepted tokens; None: plaintext, no auth
    max_workers: int = 8  # threads serving unary calls at once
    max_streams: int | None = None  # streaming calls (reflection, health Watch) at once; None: max_workers // 4
    reflection: bool | None = None  # server reflection; None: only on loopback or behind tokens
    max_concurrent_rpcs: int | None = 256  # calls in flight beyond which new ones get RESOURCE_EXHAUSTED
    max_message_bytes: int = 16 * 1024 * 1024  # largest request or response
    request_timeout_s: float | None = 1.0  # bounds each call's feature fetch when the caller set no deadline

    # Requests.
    max_k: int = 1000  # largest k a Recommend may ask for
    max_candidates: int = 10000  # most item_ids one Score may carry

    # Processes on one port (recsys.processes); None: one per core (at most 8), but one with `repo`
    processes: int | None = None

    # Running the model.
    device: str = "cpu"  # cpu | cuda
    threads: int = 1  # ONNX Runtime intra-op threads
    speed: SpeedOptions | None = None  # tuning, micro-batching, ANN, variant; None: SpeedOptions()

    # Operations.
    metrics_port: int | None = None  # serve Prometheus text over HTTP on this port; None: off
    metrics_host: str | None = None  # interface of the metrics endpoint; None: `host`
    access_log: bool = False  # one log line per call: method, status, ms, request id

    def check(self) -> None:
        """ValueError when the model source is ambiguous or incomplete."""
        if (self.artifact_dir is None) == (self.repo is None):
            raise ValueError("serve an artifact directory or a model repository (repo and model), not both")
        if (self.repo is None) != (self.model is None) or (self.version is not None and self.repo is None):
            raise ValueError("a model repository needs a model name (and a pinned version needs both)")
        if self.rollout is not None and self.repo is None:
            raise ValueError("rollouts need a model repository (repo and model)")
        if self.feature_store is not None and self.open_feature_store is None:
            raise ValueError("feature_store needs open_feature_store, the function that opens it")
