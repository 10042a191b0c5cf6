"""The CLI's output formats, the one-call `recommend` scripts use, and the helpers scripts and
tests use to start servers on loopback and wait for them (`free_port`, `wait_serving`)."""

from __future__ import annotations

import socket
import subprocess
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.client._types import Recommendation, recommendation
from recsys.errors import RecsysError
from recsys.security import ClientSecurity, open_channel
from recsys.v1 import inference_pb2, inference_pb2_grpc


class RecommendError(RecsysError):
    """A Recommend call failed; `code` is the status the server (or the channel) answered."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        super().__init__(message)
        self.code = code


def recommend(
    target: str,
    user_id: str,
    k: int,
    *,
    exclude_seen: bool = True,
    timeout_s: float = 5.0,
    security: ClientSecurity | None = None,
    explain: bool = False,
):
    """One Recommend call on a channel of its own (over TLS and with a token per `security`);
    returns the response message; raises RecommendError with the status code and details.
    `RecsysClient` keeps its channel, retries and returns dataclasses."""
    with open_channel(target, security) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        try:
            return stub.Recommend(
                inference_pb2.RecommendRequest(user_id=user_id, k=k, exclude_seen=exclude_seen, explain=explain),
                timeout=timeout_s,
            )
        except grpc.RpcError as exc:
            raise RecommendError(f"{target}: {exc.code().name}: {exc.details()}", exc.code()) from None


def _as_recommendation(response: Recommendation | inference_pb2.RecommendResponse) -> Recommendation:
    return response if isinstance(response, Recommendation) else recommendation(response)


def format_explanations(
    user_id: str, response: Recommendation | inference_pb2.RecommendResponse, shown: int = 2
) -> str:
    """Each item with "because you watched X, Y" (its `shown` strongest history items, by title
    where known) and, for feature-based rankers, its strongest signed feature contributions."""
    response = _as_recommendation(response)
    lines = [f"top {len(response.items)} for user {user_id} (model {response.model_version}, from {response.source})"]
    for rank, item in enumerate(response.items, 1):
        lines.append(f"{rank:>3}. {item.title or item.item_id} ({item.item_id}, score {item.score:.3f})")
        because = [a.title or a.name for a in item.because_items[:shown]]
        if because:
            lines.append(f"     because you watched {', '.join(because)}")
        elif response.source != "model":
            lines.append("     popular with everyone (no history the model can read)")
        if item.because_features:
            contributions = (f"{a.name} {a.contribution:+.3f}" for a in item.because_features)
            lines.append("     features: " + ", ".join(contributions))
    return "\n".join(lines)


def format_recommendations(user_id: str, response: Recommendation | inference_pb2.RecommendResponse) -> str:
    response = _as_recommendation(response)
    lines = [f"top {len(response.items)} for user {user_id} (model {response.model_version}, from {response.source})"]
    lines.append(f"{'#':>3}  {'item':<10} {'score':>8}  title")
    for rank, item in enumerate(response.items, 1):
        lines.append(f"{rank:>3}  {item.item_id:<10} {item.score:>8.3f}  {item.title}")
    return "\n".join(lines)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(target: str, process: subprocess.Popen | None = None, timeout_s: float = 60.0) -> None:
    """Polls `target`'s health service until it says SERVING; raises RuntimeError if `process`
    exits first, TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server for {target} exited with code {process.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == serving:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{target} not SERVING after {timeout_s:.0f} s")
