"""`RecsysClient`: the blocking client, one kept channel per target."""

from __future__ import annotations

import threading

import grpc

from recsys.client._surface import Surface
from recsys.client._types import error
from recsys.security import open_channel


class RecsysClient(Surface):
    """Blocking client of the recsys services (every method: see `Surface`). Thread-safe; one
    channel per target, opened on first use and kept until `close()` (or the `with` block ends)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._calls: dict[tuple[str, str], grpc.UnaryUnaryMultiCallable] = {}

    def _callable(self, where: str, method: str, request, response_type) -> grpc.UnaryUnaryMultiCallable:
        with self._lock:
            call = self._calls.get((where, method))
            if call is None:
                channel = self._channels.get(where)
                if channel is None:
                    channel = self._channels[where] = open_channel(self._target(where), self.security, self.options)
                call = self._calls[where, method] = channel.unary_unary(
                    method,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=response_type.FromString,
                )
            return call

    def _invoke(self, where, service, rpc, request, response_type, convert, timeout_s):
        call = self._callable(where, f"/{service}/{rpc}", request, response_type)
        try:
            response = call(request, timeout=self.timeout_s if timeout_s is None else timeout_s)
        except grpc.RpcError as exc:
            raise error(exc) from None
        return convert(response)

    def close(self) -> None:
        with self._lock:
            channels, self._channels, self._calls = list(self._channels.values()), {}, {}
        for channel in channels:
            channel.close()

    def __enter__(self) -> RecsysClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
