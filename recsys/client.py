"""A small client of the inference service, for the CLI and scripts."""

from __future__ import annotations

import grpc

from recsys.security import ClientSecurity, open_channel
from recsys.v1 import inference_pb2, inference_pb2_grpc

__all__ = ["RecommendError", "format_recommendations", "recommend"]


class RecommendError(RuntimeError):
    pass


def recommend(target: str, user_id: str, k: int, *, exclude_seen: bool = True, timeout_s: float = 5.0,
              security: ClientSecurity | None = None):
    """One Recommend call (over TLS and with a token per `security`); raises RecommendError
    with the status code and details."""
    with open_channel(target, security) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        try:
            return stub.Recommend(
                inference_pb2.RecommendRequest(user_id=user_id, k=k, exclude_seen=exclude_seen), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            raise RecommendError(f"{target}: {exc.code().name}: {exc.details()}") from None


def format_recommendations(user_id: str, response: inference_pb2.RecommendResponse) -> str:
    source = inference_pb2.Source.Name(response.source).removeprefix("SOURCE_").lower()
    lines = [f"top {len(response.items)} for user {user_id} (model {response.model_version}, from {source})"]
    lines.append(f"{'#':>3}  {'item':<10} {'score':>8}  title")
    for rank, item in enumerate(response.items, 1):
        lines.append(f"{rank:>3}  {item.item_id:<10} {item.score:>8.3f}  {item.title}")
    return "\n".join(lines)
