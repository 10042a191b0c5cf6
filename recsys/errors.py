"""The error tree shared by every recsys service, and its one mapping to gRPC status codes.

    RecsysError                 INTERNAL (base; never raised directly)
    ├── InvalidArgument         INVALID_ARGUMENT    the request itself is wrong
    ├── NotFound                NOT_FOUND           a named thing does not exist
    ├── FailedPrecondition      FAILED_PRECONDITION the system is not in a state to serve this
    │   ├── ChecksumError                           bytes differ from their recorded sha256 (recsys.artifact)
    │   └── SchemaMismatch                          the feature service serves another schema (inference_server)
    ├── Unavailable             UNAVAILABLE         a dependency (store, feature service) is down
    │   ├── StoreUnavailable                        the feature store cannot serve a call (feature_service.stores)
    │   └── NonFiniteScores                         a model run gave NaN or ±inf (recsys.onnx_session.check_finite)
    ├── ResourceExhausted       RESOURCE_EXHAUSTED  too much load or too large a request
    ├── Unauthenticated         UNAUTHENTICATED     no valid token or certificate (also PERMISSION_DENIED, recsys.client)
    ├── RecommendError          (as received)       a Recommend call failed (recsys.client)
    └── ExportError             INTERNAL            training could not write an artifact (trainer.export.onnx)

Every exception class in recsys, feature_service, inference_server and trainer sits in this tree
(tests/recsys/test_errors.py walks the sources), so the CLI and the servers catch `RecsysError`
once. Domain code raises these; `ErrorMappingInterceptor` turns them into statuses, so servicers
never call `context.abort` themselves. Any other exception becomes INTERNAL and is logged
once with its traceback. A request that does not parse (bad protobuf bytes, invalid UTF-8 in a
string field) is the client's error: INVALID_ARGUMENT, where gRPC itself would answer INTERNAL.
Status details are cut to `MAX_DETAILS_CHARS`: gRPC drops a call whose details exceed its 16 KiB
metadata limit (the client then sees RESOURCE_EXHAUSTED instead of the real error), and a
message quoting a client's huge value should not echo all of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

__all__ = [
    "MAX_DETAILS_CHARS",
    "ErrorMappingInterceptor",
    "FailedPrecondition",
    "InvalidArgument",
    "NonFiniteScores",
    "NotFound",
    "RecsysError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]

log = logging.getLogger(__name__)

MAX_DETAILS_CHARS = 1000


class RecsysError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidArgument(RecsysError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RecsysError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(RecsysError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(RecsysError):
    code = grpc.StatusCode.UNAVAILABLE


class NonFiniteScores(Unavailable):
    """A model run gave NaN or ±inf: the run failed, as if the model were down for this call."""


class ResourceExhausted(RecsysError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(RecsysError):
    code = grpc.StatusCode.UNAUTHENTICATED


def _details(message: str) -> str:
    if len(message) <= MAX_DETAILS_CHARS:
        return message
    return f"{message[:MAX_DETAILS_CHARS]}… ({len(message) - MAX_DETAILS_CHARS} more characters)"


class _Malformed:
    """What `_tolerant` hands the handler instead of a request that did not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or the C++/upb parser's own
            return _Malformed(exc)

    return deserialize


class _MappedUnary:
    """A unary method's behaviour with its errors mapped to statuses; one per method."""

    __slots__ = ("behavior", "method")

    def __init__(self, behavior: Callable[[Any, grpc.ServicerContext], Any], method: str) -> None:
        self.behavior = behavior
        self.method = method

    def __call__(self, request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, _details(f"malformed request to {self.method}: {request.error}")
            )
        try:
            return self.behavior(request, context)
        except RecsysError as exc:
            context.abort(exc.code, _details(str(exc)))
        except Exception:  # the catch-all that keeps one bad request from leaking a stack trace
            log.exception("unhandled error in %s", self.method)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {self.method}")


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Maps `RecsysError` subclasses to their status code; anything else to INTERNAL. Each
    method's wrapped handler is built on its first call and reused while the handler beneath
    stays the same object (grpcio hands out the one it registered)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            _MappedUnary(handler.unary_unary, method),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped
