"""Builds a gRPC server the same way for every recsys service.

`create_server` returns `(server, port, health)` so tests can bind port 0; `run_until_signal`
is what `main()` calls: it serves until SIGTERM/SIGINT, then drains in-flight requests for a
grace period. Every server carries the standard health service (NOT_SERVING until the caller
says otherwise), the error-mapping interceptor and a budget for streaming calls; server
reflection where the port is loopback or needs a token (or when asked for); `security` adds TLS
or mutual TLS and token authentication (`recsys.security`), whose interceptor runs first.

A sync grpcio server runs every call, streams included, on one of its worker threads for as
long as the call lasts, so idle long-lived streams (reflection, health Watch) could hold every
worker and starve the unary calls. `StreamBudget` lets at most `max_streams` streaming calls run
at once (more get RESOURCE_EXHAUSTED), and the pool has `max_workers + max_streams` threads:
unary calls always keep `max_workers` of them.

Several processes on one port (`recsys.processes`): each worker builds its own server with
`reuse_port=True` and `peers`, its view of the other workers; its health then answers SERVING
only while its own state and every peer's is SERVING (`PeerHealth`), so a probe gets the same
answer whichever worker the kernel hands its connection to.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as grpc_reflection

from recsys.errors import ErrorMappingInterceptor, RecsysError
from recsys.security import ServerSecurity

__all__ = [
    "HealthWatch",
    "PeerHealth",
    "Peers",
    "ServiceBinding",
    "StreamBudget",
    "create_server",
    "is_loopback",
    "run_until_signal",
    "set_serving",
]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer, the generated function that adds it to a server, and its full name."""

    servicer: object
    add_to_server: Callable[[object, grpc.Server], None]
    full_name: str  # e.g. "recsys.v1.InferenceService"


class Peers(Protocol):
    """One worker's view of the workers sharing its port (`recsys.processes.WorkerSlot`)."""

    def report(self, serving: bool) -> None:
        """Publishes this worker's own state to the others."""

    def all_serving(self) -> bool:
        """Whether every worker, this one included, has reported SERVING."""


class PeerHealth(health.HealthServicer):
    """A health servicer whose gated entries ("" and the server's services) answer SERVING only
    while this process set them SERVING and every peer reports SERVING. Entries outside `gated`
    (e.g. a dependency's mirror) pass through. `refresh()` re-evaluates; a daemon thread calls
    it every `interval_s` so a peer's change shows within that time."""

    def __init__(self, peers: Peers, gated: Sequence[str], interval_s: float = 0.2) -> None:
        super().__init__()
        self.peers = peers
        self.gated = {"", *gated}
        # Under the parent's RLock: what this process set, and what Check/Watch answer now.
        self._local: dict[str, int] = {}
        self._published: dict[str, int] = {}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="peer-health", daemon=True)
        self._thread.start()

    def set(self, service, status):
        with self._lock:
            self._local[service] = status
            if service == "":
                self.peers.report(status == health_pb2.HealthCheckResponse.SERVING)
            self._publish(service, force=True)

    def refresh(self) -> None:
        with self._lock:
            for service in self._local:
                self._publish(service)

    def enter_graceful_shutdown(self):
        self._closed.set()
        super().enter_graceful_shutdown()

    def _publish(self, service: str, force: bool = False) -> None:
        status = self._local[service]
        serving = health_pb2.HealthCheckResponse.SERVING
        if service in self.gated and status == serving and not self.peers.all_serving():
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        if force or self._published.get(service) != status:  # Watch streams hear changes only
            self._published[service] = status
            super().set(service, status)

    def _run(self, interval_s: float) -> None:
        while not self._closed.wait(interval_s):
            self.refresh()


def create_server(
    bindings: Sequence[ServiceBinding],
    *,
    host: str = "[::]",
    port: int = 0,
    max_workers: int = 8,
    security: ServerSecurity | None = None,
    max_concurrent_rpcs: int | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    max_streams: int | None = None,
    reflection: bool | None = None,
    max_connection_age_s: float | None = 300.0,
    max_connection_age_grace_s: float = 30.0,
    reuse_port: bool = False,
    peers: Peers | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Builds and starts a server; returns it, the bound port and its health servicer.

    Health starts NOT_SERVING for every service and for "" (the whole server): call
    `set_serving` once the model or store is loaded and checked. With `security.tls` the port
    speaks only TLS; with `security.tokens` every call but health needs a bearer token.
    Load shedding: with `max_concurrent_rpcs`, a call arriving while that many are in flight
    (running or queued for a worker) is refused at once with RESOURCE_EXHAUSTED instead of
    queueing without bound. `interceptors` (e.g. metrics) run outermost, before authentication.
    Streaming calls (reflection, health Watch): at most `max_streams` at once (default
    max(1, max_workers // 4); 0 refuses them all), on threads of their own. `reflection`:
    None turns server reflection on only where `host` is loopback or tokens are required.
    `max_connection_age_s` (None: forever): each client connection is closed (GOAWAY) after
    about that long, in-flight calls get `max_connection_age_grace_s` more, and the client
    reconnects and resolves its target again, so replicas added behind a DNS name get calls.
    `reuse_port` (only for workers of one supervisor, which guards the port against other
    programs): bind with SO_REUSEPORT so sibling processes share the port; otherwise a busy port
    is refused. `peers`: health follows every worker's state (`PeerHealth`).
    """
    security = security or ServerSecurity()
    max_streams = max(1, max_workers // 4) if max_streams is None else max_streams
    if max_streams < 0:
        raise ValueError(f"max_streams must be >= 0, got {max_streams}")
    if reflection is None:
        reflection = is_loopback(host) or bool(security.tokens)
    credentials = security.credentials()  # reads the PEM files first: a bad path fails before binding
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers + max_streams),
        # Authentication first, so an unauthenticated call never reaches a servicer nor takes a
        # stream slot.
        interceptors=[*interceptors, *security.interceptors(), StreamBudget(max_streams), ErrorMappingInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            *(
                []
                if max_connection_age_s is None
                else [
                    ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
                    ("grpc.max_connection_age_grace_ms", int(max_connection_age_grace_s * 1000)),
                ]
            ),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    names = [b.full_name for b in bindings]
    health_servicer = health.HealthServicer() if peers is None else PeerHealth(peers, names)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in bindings:
        binding.add_to_server(binding.servicer, server)
    if reflection:
        grpc_reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, grpc_reflection.SERVICE_NAME],
            server,
        )
    address = f"{host}:{port}"
    try:
        bound = (
            server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
        )
    except RuntimeError:  # grpcio's "Failed to bind": a busy port, or an address not on this host
        bound = 0
    if bound == 0:
        raise OSError(f"could not bind {host}:{port} (is the port busy?)")
    set_serving(health_servicer, names, serving=False)
    server.start()
    return server, bound, health_servicer


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback addresses ("127.0.0.1", "::1", "[::1]")."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


class StreamBudget(grpc.ServerInterceptor):
    """RESOURCE_EXHAUSTED for a streaming call that starts while `limit` streaming calls are
    being served; unary calls pass untouched. A slot is taken when the call starts on a worker
    and given back when the call ends, however it ends (completed, cancelled, timed out)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight = 0
        # method -> (handler beneath, its bounded twin): built once while the handler stays the same
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = (handler.request_streaming, handler.response_streaming)
        behavior, make = {
            (False, True): (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
            (True, False): (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
            (True, True): (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
        }[kind]
        return make(
            self._bounded(behavior),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _take(self) -> bool:
        with self._lock:
            if self._in_flight >= self.limit:
                return False
            self._in_flight += 1
            return True

    def _give_back(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _bounded(self, behavior):
        def run(request_or_iterator, context: grpc.ServicerContext):
            if not self._take():
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self.limit} streaming calls already in flight on this server; try again later",
                )
            if not context.add_callback(self._give_back):  # the call has already ended
                self._give_back()
            return behavior(request_or_iterator, context)

        return run


def set_serving(health_servicer: health.HealthServicer, names: Sequence[str], *, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *names]:
        health_servicer.set(name, status)


# glibc's M_ARENA_MAX (mallopt); at most this many malloc arenas for a server process
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Caps glibc's malloc arenas (as MALLOC_ARENA_MAX does) before the server starts threads;
    returns whether it did. glibc gives each busy thread an arena of its own and rarely hands
    their memory back, so a threaded server grows by a few MiB at every first-time event (a
    version swap, a store outage) and stays there; two arenas keep it flat
    (docs/results/soak.md). A MALLOC_ARENA_MAX set in the environment wins; no-op off glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc
        return False


def run_until_signal(server: grpc.Server, health_servicer: health.HealthServicer, *, grace_s: float = 10.0) -> None:
    """Blocks until SIGTERM or SIGINT, then stops taking new calls and drains for `grace_s`."""
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %s: draining for up to %.0f s", signal.Signals(signum).name, grace_s)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    health_servicer.enter_graceful_shutdown()
    server.stop(grace_s).wait()
    log.info("stopped")


class HealthWatch:
    """Mirrors a dependency's state into health: every `interval_s`, `probe()` runs; it returns
    when the dependency is fine and raises a `RecsysError` saying why when it is not. Health of
    `names` follows, and the state is logged once per change (kind of error included), not on
    every round. `check()` runs one round (startup and tests call it); the daemon thread ends
    with `stop()`, or when the probe raises ValueError (its channel or store was closed).
    """

    def __init__(
        self,
        probe: Callable[[], None],
        health_servicer: health.HealthServicer,
        names: Sequence[str],
        interval_s: float,
        *,
        what: str,
    ) -> None:
        self.probe = probe
        self.health = health_servicer
        self.names = list(names)
        self.interval_s = interval_s
        self.what = what  # what the probe watches, for the log line, e.g. "feature store"
        self.serving: bool | None = None
        self.reason = ""  # why not SERVING, "" while SERVING
        self._kind: type | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)

    def start(self) -> HealthWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        try:
            self.probe()
            ok, reason, kind = True, "", None
        except RecsysError as exc:
            ok, reason, kind = False, str(exc), type(exc)
        changed = ok != self.serving or kind is not self._kind
        self._kind, self.reason = kind, reason
        if changed:
            if ok:
                log.info("health: SERVING (watching %s)", self.what)
            else:
                log.warning("%s: NOT_SERVING", reason)
            self.serving = ok
            set_serving(self.health, self.names, serving=ok)
        return ok

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except ValueError:  # closed underneath us: the server is shutting down
                return
