"""Client of the feature service, as the inference server sees it."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from recsys.errors import FailedPrecondition, InvalidArgument, Unavailable
from recsys.v1 import features_pb2, features_pb2_grpc

__all__ = ["FeatureClient", "UserView"]


@dataclass(frozen=True)
class UserView:
    user_id: str
    found: bool
    history: tuple[str, ...]  # item ids, oldest first


class FeatureClient:
    def __init__(self, target: str, *, timeout_s: float = 1.0):
        self.target = target
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(target)
        self.stub = features_pb2_grpc.FeatureServiceStub(self.channel)

    def get_user(self, user_id: str, max_history: int) -> UserView:
        request = features_pb2.GetUserFeaturesRequest(user_ids=[user_id], max_history=max_history)
        response = self._call(self.stub.GetUserFeatures, request)
        user = response.users[0]
        return UserView(user.user_id, user.found, tuple(user.history))

    def schema_hash(self) -> str:
        return self._call(self.stub.GetSchema, features_pb2.GetSchemaRequest()).schema_hash

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(details) from None
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise FailedPrecondition(f"feature service: {details}") from None
            raise Unavailable(
                f"feature service at {self.target} is unavailable ({code.name}: {details})"
            ) from None

    def close(self) -> None:
        self.channel.close()
