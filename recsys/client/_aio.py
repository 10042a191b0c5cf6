"""`AsyncRecsysClient`: the same surface on `grpc.aio`, one kept channel per target."""

from __future__ import annotations

import logging

import grpc
import grpc.aio

from recsys.client._surface import Surface
from recsys.client._types import error
from recsys.security import channel_credentials

log = logging.getLogger(__name__)


class AsyncRecsysClient(Surface):
    """`RecsysClient`'s methods, each returning an awaitable (`await client.recommend("u1")`).
    Channels open on the first call (inside the running event loop) and belong to that loop;
    close them with `await client.close()` or `async with`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable] = {}
        token = self.security.token
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def _channel(self, where: str) -> grpc.aio.Channel:
        channel = self._channels.get(where)
        if channel is None:
            target, tls = self._target(where), self.security.tls
            if tls is not None:
                channel = grpc.aio.secure_channel(target, channel_credentials(tls), options=self.options)
            else:
                if self._metadata:
                    log.warning("sending a token to %s without TLS: anyone on the path can read it", target)
                channel = grpc.aio.insecure_channel(target, options=self.options)
            self._channels[where] = channel
        return channel

    async def _invoke(self, where, service, rpc, request, response_type, convert, timeout_s):
        method = f"/{service}/{rpc}"
        call = self._calls.get((where, method))
        if call is None:
            call = self._calls[where, method] = self._channel(where).unary_unary(
                method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )
        try:
            response = await call(
                request, timeout=self.timeout_s if timeout_s is None else timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error(exc) from None
        return convert(response)

    async def close(self) -> None:
        channels, self._channels, self._calls = list(self._channels.values()), {}, {}
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> AsyncRecsysClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()
