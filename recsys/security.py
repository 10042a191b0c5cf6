"""TLS, mutual TLS and bearer-token authentication for both services and their clients.

Servers: `ServerSecurity(tls=ServerTls(cert, key, client_ca), tokens=...)`. With `tls`, the
server speaks only TLS; with `tls.client_ca` as well, it requires a client certificate signed by
that CA (mutual TLS). With `tokens`, `TokenAuthInterceptor` refuses every call that does not
carry `authorization: Bearer <one of the tokens>` with UNAUTHENTICATED, except the standard
health service, which stays open so load balancers and orchestrators can probe without a secret.

Clients: `open_channel(target, ClientSecurity(tls=ClientTls(ca, cert, key), token=...))`.
The token goes in the `authorization` metadata of every call (through a client interceptor, so
it also works on a plaintext channel, where a warning is logged once per target: a token sent in
clear is readable on the wire).

Certificates and keys are PEM files; tokens come from a file (one per line, `#` comments) or
an environment variable (comma-separated). Tokens are compared in constant time and never
logged; `repr` of these objects leaves them out.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

__all__ = [
    "AUTH_TOKENS_ENV",
    "OPEN_METHODS",
    "ClientSecurity",
    "ClientTls",
    "ServerSecurity",
    "ServerTls",
    "TokenAuthInterceptor",
    "open_channel",
    "read_token",
    "read_tokens",
    "server_credentials",
]

log = logging.getLogger(__name__)

AUTH_TOKENS_ENV = "RECSYS_AUTH_TOKENS"  # tokens a server accepts, comma-separated
# RFC 6750 b64token: what `secrets.token_urlsafe` produces; also keeps metadata ASCII.
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
# Calls that need no token: health probes (gRPC's standard health service).
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate chain and key (PEM paths); `client_ca` turns on mutual TLS."""

    cert: str | Path
    key: str | Path
    client_ca: str | Path | None = None


@dataclass(frozen=True)
class ClientTls:
    """`ca`: the CA that signed the server's certificate (None: the system's roots);
    `cert` and `key`: this client's certificate and key, for servers that require mutual TLS."""

    ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None


@dataclass(frozen=True)
class ServerSecurity:
    tls: ServerTls | None = None
    tokens: frozenset[str] = field(default=frozenset(), repr=False)

    def credentials(self) -> grpc.ServerCredentials | None:
        return server_credentials(self.tls) if self.tls is not None else None

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        return [TokenAuthInterceptor(self.tokens)] if self.tokens else []

    def describe(self) -> str:
        """For log lines: what is on, never the secrets."""
        tls = "plaintext" if self.tls is None else ("mutual TLS" if self.tls.client_ca else "TLS")
        auth = f"token auth ({len(self.tokens)} tokens)" if self.tokens else "no auth"
        return f"{tls}, {auth}"


@dataclass(frozen=True)
class ClientSecurity:
    tls: ClientTls | None = None
    token: str | None = field(default=None, repr=False)


def _read_pem(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{what} {path} is not a PEM file")
    return data


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """TLS server credentials; client certificates required (and checked) when `client_ca` is set."""
    key = _read_pem(tls.key, "TLS key")
    cert = _read_pem(tls.cert, "TLS certificate")
    client_ca = _read_pem(tls.client_ca, "client CA") if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    if (tls.cert is None) != (tls.key is None):
        raise ValueError("a client certificate needs its key and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(tls.ca, "CA certificate") if tls.ca is not None else None,
        private_key=_read_pem(tls.key, "TLS key") if tls.key is not None else None,
        certificate_chain=_read_pem(tls.cert, "TLS certificate") if tls.cert is not None else None,
    )


def _check_token(token: str, where: str) -> str:
    if not _TOKEN.match(token):
        # Say where, never what: the value may be a real secret with a typo.
        raise ValueError(f"{where}: a token must be letters, digits and -._~+/ (e.g. secrets.token_urlsafe(32))")
    return token


def read_tokens(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> frozenset[str]:
    """Tokens a server accepts: one per line of `path` (blank lines and `#` comments skipped),
    else the comma-separated `RECSYS_AUTH_TOKENS` from `env` (default: the process's
    environment); empty when neither is given (authentication off). A file or variable that is
    given but holds no token is an error, so a typo cannot silently turn authentication off."""
    env = os.environ if env is None else env
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read token file {path}: {exc}") from None
        raw, where = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")], f"token file {path}"
    elif AUTH_TOKENS_ENV in env:
        raw, where = [s.strip() for s in env[AUTH_TOKENS_ENV].split(",") if s.strip()], AUTH_TOKENS_ENV
    else:
        return frozenset()
    if not raw:
        raise ValueError(f"{where} holds no token")
    return frozenset(_check_token(t, where) for t in raw)


def read_token(path: str | Path | None = None, value: str | None = None) -> str | None:
    """The token a client sends: the first token line of `path`, else `value`, else None."""
    if path is not None:
        tokens = sorted(read_tokens(path))  # one expected; checked and stripped the same way
        if len(tokens) != 1:
            raise ValueError(f"token file {path} holds {len(tokens)} tokens; a client sends one")
        return tokens[0]
    if value:
        return _check_token(value.strip(), "token")
    return None


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for any call without `authorization: Bearer <token>` naming one of
    `tokens`; `open_methods` (health) pass without one. Compares SHA-256 digests in constant time."""

    def __init__(self, tokens: Iterable[str], open_methods: Iterable[str] = OPEN_METHODS) -> None:
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]
        if not self._digests:
            raise ValueError("TokenAuthInterceptor needs at least one token")
        self._open = frozenset(open_methods)
        self._refusers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def _authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key != "authorization" or not isinstance(value, str):
                continue
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer":
                continue
            digest = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
            # Check every token (no early exit) so timing says nothing about which matched.
            if sum(hmac.compare_digest(digest, d) for d in self._digests):
                return True
        return False

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method in self._open or self._authorized(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        log.debug("unauthenticated call to %s refused", method)
        cached = self._refusers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        refusing = _refusing(handler)
        self._refusers[method] = (handler, refusing)
        return refusing


def _refuse(_request, context: grpc.ServicerContext):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token: send authorization: Bearer <token>")


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that refuses the call, without parsing
    the request (no deserializer: an unauthenticated caller's bytes are never decoded)."""
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(_refuse, response_serializer=handler.response_serializer)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)


_warned_plaintext: set[str] = set()


def open_channel(
    target: str, security: ClientSecurity | None = None, options: Sequence[tuple[str, object]] = ()
) -> grpc.Channel:
    """A channel to `target`: TLS when `security.tls` is set, carrying `security.token` if any."""
    security = security or ClientSecurity()
    if security.tls is not None:
        channel = grpc.secure_channel(target, channel_credentials(security.tls), options=list(options))
    else:
        channel = grpc.insecure_channel(target, options=list(options))
        if security.token and target not in _warned_plaintext:  # once per target (clients pool channels)
            _warned_plaintext.add(target)
            log.warning("sending a token to %s without TLS: anyone on the path can read it", target)
    if security.token:
        channel = grpc.intercept_channel(channel, _BearerToken(security.token))
    return channel
