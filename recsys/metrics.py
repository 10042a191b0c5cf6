"""Prometheus metrics for the services, and the interceptor that records every call.

Each server owns one `ServiceMetrics` with its own registry (so two servers in one process, as
in the tests, do not share counters) and may expose it over HTTP (`serve_http`, the text
format at any path, e.g. /metrics). Every service has the names go-grpc-prometheus and
py-grpc-prometheus use, so stock gRPC dashboards work unchanged (grpc_type is unary,
server_stream, client_stream or bidi_stream; grpc_service e.g. recsys.v1.InferenceService;
grpc_method e.g. Recommend):

    grpc_server_started_total{grpc_type, grpc_service, grpc_method}
    grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}
    grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method}   histogram
    grpc_server_msg_received_total, grpc_server_msg_sent_total{grpc_type, grpc_service, grpc_method}
    recsys_grpc_in_flight                          unary calls being served now
    recsys_shed_total{reason}                      calls refused for load: stream_budget
    process_*, python_gc_*, python_info            the process (CPU, RSS, open fds, start time)

and the inference server adds (`InferenceMetrics`):

    recsys_model_info{model_version, version}      1 for the version serving now
    recsys_model_serving_version                   its repository version (0: plain artifact)
    recsys_model_swaps_total{outcome}              versions swapped in / rejected
    recsys_model_run_seconds{model_version}        time inside ONNX Runtime per run
    recsys_feature_fetch_seconds{method, code}     calls to the feature service
    recsys_degraded_responses_total{rpc, source}   answers from a fallback (the fallback count)
    recsys_feature_service_up                      1 while the feature service answers
    recsys_failures_total{cause}                   work that failed and was answered around
    recsys_batch_runs_total, recsys_batch_rows_total   micro-batching (--batch-max): ONNX
                                                   Runtime runs and the rows they held; their
                                                   rates' ratio is the mean batch size
    recsys_batch_queue_seconds                     a row's wait in the micro-batcher's queue
                                                   (--batch-wait-us > 0)

Load shedding: a streaming call refused by the stream budget (`recsys.grpc_server`) is handled
with grpc_code="RESOURCE_EXHAUSTED" and counts in recsys_shed_total{reason="stream_budget"}.
Calls refused by the server's concurrency limit (`max_concurrent_rpcs`) never reach a handler:
grpcio answers them RESOURCE_EXHAUSTED itself, after the interceptors chose the handler but
before it runs, so they show only on the client side.

The same interceptor gives each unary call its request id (`recsys.logs.REQUEST_ID`): the
caller's `x-request-id` metadata when it sent a usable one, else a new one; the id goes back to
the caller as initial metadata, and with `access_log` each call is logged once (method, code,
milliseconds) under its id.

Several processes (`recsys.processes`, `--processes N`): every worker keeps these metrics in
prometheus-client's multiprocess files and the supervisor alone serves the endpoint, through
`supervisor_registry`: counters and histograms are summed over the workers; gauges say how they
combine (`multiprocess_mode`): recsys_grpc_in_flight is the live workers' sum,
recsys_feature_service_up their minimum, recsys_model_info and recsys_model_serving_version
their maximum (1 for a version any worker serves). process_* is summed over the supervisor and
its workers (CPU seconds, RSS, virtual memory, open fds; the start time and fd limit are the
supervisor's); python_gc_* is left out. Each worker also names itself to callers in the
`x-recsys-worker` response header (its index, 0..N-1).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server

from recsys.logs import REQUEST_ID, REQUEST_ID_HEADER, clean_request_id

__all__ = [
    "LATENCY_BUCKETS",
    "MODEL_BUCKETS",
    "WORKER_HEADER",
    "InferenceMetrics",
    "MetricsInterceptor",
    "ServiceMetrics",
    "serve_registry",
    "supervisor_registry",
]

log = logging.getLogger("recsys.access")

# Seconds: sub-millisecond model calls up to a feature service timing out.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Seconds: one ONNX Runtime run (0.2 ms for a small SASRec) or a row's wait for a batch.
MODEL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# prometheus-client picks its multiprocess mode from this variable when it is first imported
_MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
WORKER_HEADER = "x-recsys-worker"  # which worker of a multi-process server answered
_TYPES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}


class ServiceMetrics:
    """One service's registry: the process, and the per-call metrics every service has.
    `worker`: this process's index among several on one port (None: the only one)."""

    def __init__(self, worker: int | None = None) -> None:
        self.worker = worker
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        call = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter("grpc_server_started", "RPCs started on the server", call, registry=r)
        self.handled = Counter(
            "grpc_server_handled", "RPCs completed on the server, by status code", [*call, "grpc_code"], registry=r
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "time to handle an RPC on the server, in seconds",
            call,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.received = Counter("grpc_server_msg_received", "stream messages received by the server", call, registry=r)
        self.sent = Counter("grpc_server_msg_sent", "stream messages sent by the server", call, registry=r)
        self.in_flight = Gauge(
            "recsys_grpc_in_flight", "unary gRPC calls being served", multiprocess_mode="livesum", registry=r
        )
        self.shed = Counter("recsys_shed", "calls refused for load, by reason", ["reason"], registry=r)
        self.shed.labels("stream_budget")
        self._http: WSGIServer | None = None

    def interceptor(self, *, access_log: bool = False) -> MetricsInterceptor:
        return MetricsInterceptor(self, access_log=access_log)

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def serve_http(self, port: int, host: str = "0.0.0.0") -> int:
        """Serves the metrics over HTTP on a daemon thread; returns the bound port (0 = any).
        `host` is written as for gRPC: "127.0.0.1", "::1" or "[::1]", "[::]" (every interface;
        like gRPC, 0.0.0.0 where this machine has no IPv6)."""
        self._http = serve_registry(self.registry, port, host)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class InferenceMetrics(ServiceMetrics):
    """`ServiceMetrics` plus the inference server's model, feature and fallback metrics."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__(worker)
        r = self.registry
        self.model_info = Gauge(
            "recsys_model_info",
            "1 for the model version serving now",
            ["model_version", "version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.serving_version = Gauge(
            "recsys_model_serving_version",
            "repository version serving now (0: a plain artifact)",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.swaps = Counter("recsys_model_swaps", "model versions swapped in or rejected", ["outcome"], registry=r)
        self.feature_fetch = Histogram(
            "recsys_feature_fetch_seconds",
            "feature service calls in seconds",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.degraded = Counter("recsys_degraded_responses", "answers from a fallback", ["rpc", "source"], registry=r)
        self._feature_children: dict[tuple[str, str], Any] = {}  # (method, code) -> feature_fetch child
        self._degraded_children: dict[tuple[str, str], Any] = {}  # (rpc, source) -> degraded child
        self.feature_up = Gauge(
            "recsys_feature_service_up",
            "1 while the feature service answers",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.failures = Counter(
            "recsys_failures",
            "work that failed and was answered around: non-finite model scores, item feature refreshes, "
            "feature answers over the message limit",
            ["cause"],
            registry=r,
        )

        self.model_runs = Histogram(
            "recsys_model_run_seconds",
            "time inside ONNX Runtime per model run, in seconds",
            ["model_version"],
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.batch_queue = Histogram(
            "recsys_batch_queue_seconds",
            "a row's wait in the micro-batcher's queue before its run, in seconds",
            buckets=MODEL_BUCKETS,
            registry=r,
        )

    def model_run(self, model_version: str) -> Callable[[float], None]:
        """The callback a model session calls with each run's seconds."""
        return self.model_runs.labels(model_version).observe

    def model_changed(self, label: str, version: int | None) -> None:
        if _MULTIPROCESS:  # no clear() there: the old version's entry stays in the file, at 0
            for labels in list(self.model_info._metrics):
                self.model_info.labels(*labels).set(0)
        else:
            self.model_info.clear()
        self.model_info.labels(label, str(version or 0)).set(1)
        self.serving_version.set(version or 0)
        self.swaps.labels("swapped").inc()

    def model_rejected(self, _version: int, _reason: str) -> None:
        self.swaps.labels("rejected").inc()

    def feature_call(self, method: str, seconds: float, code: str) -> None:
        child = self._feature_children.get((method, code))
        if child is None:  # cached: labels() locks and builds a key (never removed, so safe)
            child = self._feature_children[(method, code)] = self.feature_fetch.labels(method, code)
        child.observe(seconds)

    def degraded_answer(self, rpc: str, source: str) -> None:
        child = self._degraded_children.get((rpc, source))
        if child is None:
            child = self._degraded_children[(rpc, source)] = self.degraded.labels(rpc, source)
        child.inc()

    def failure(self, cause: str, n: int = 1) -> None:
        self.failures.labels(cause).inc(n)

    def watch_batches(self, stats: Callable[[], tuple[int, int] | None]) -> None:
        """Exports `stats()` -> (runs, rows) of the serving model's micro-batcher, or None."""
        self.registry.register(_BatchCollector(stats))


class _BatchCollector:
    def __init__(self, stats: Callable[[], tuple[int, int] | None]) -> None:
        self.stats = stats

    def collect(self):
        got = self.stats()
        if got is None:
            return
        runs, rows = got
        yield CounterMetricFamily("recsys_batch_runs", "micro-batched ONNX Runtime runs", value=runs)
        yield CounterMetricFamily("recsys_batch_rows", "rows in micro-batched ONNX Runtime runs", value=rows)


class _Children:
    """One method's metric children, looked up once: `labels()` takes a lock and builds a key
    on every call. Children are never removed from these metrics, so holding them is safe (in
    multiprocess mode too: a child is a handle on its values in this process's file)."""

    __slots__ = ("handled", "latency", "metrics", "labels", "received", "sent", "started")

    def __init__(self, metrics: ServiceMetrics, labels: tuple[str, str, str]) -> None:
        self.metrics = metrics
        self.labels = labels
        self.started = metrics.started.labels(*labels)
        self.received = metrics.received.labels(*labels)
        self.sent = metrics.sent.labels(*labels)
        self.latency = metrics.latency.labels(*labels)
        self.handled: dict[grpc.StatusCode, Any] = {}

    def done(self, code: grpc.StatusCode, seconds: float) -> None:
        handled = self.handled.get(code)
        if handled is None:  # two threads may both look it up: labels() gives both the same child
            handled = self.handled[code] = self.metrics.handled.labels(*self.labels, code.name)
        handled.inc()
        self.latency.observe(seconds)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and self.labels[0] != "unary":
            # The only streaming calls are reflection and health Watch, and the only thing that
            # refuses them so is the stream budget.
            self.metrics.shed.labels("stream_budget").inc()


class _ObservedUnary:
    """A unary method's behaviour, counted, timed and named (request id). Built once per method:
    everything a call needs beyond its request and context is looked up here."""

    __slots__ = ("access_log", "behavior", "children", "in_flight", "method", "worker")

    def __init__(self, behavior, method: str, children: _Children, access_log: bool) -> None:
        self.behavior = behavior
        self.method = method
        self.children = children
        self.in_flight = children.metrics.in_flight
        self.access_log = access_log
        worker = children.metrics.worker
        self.worker = () if worker is None else ((WORKER_HEADER, str(worker)),)

    def __call__(self, request, context: grpc.ServicerContext):
        incoming = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_HEADER:
                incoming = value  # the last one wins, as in a dict of the metadata
        request_id = clean_request_id(incoming)
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        children = self.children
        children.started.inc()
        children.received.inc()
        self.in_flight.inc()
        code = grpc.StatusCode.OK
        try:
            context.send_initial_metadata(((REQUEST_ID_HEADER, request_id), *self.worker))
            response = self.behavior(request, context)
            code = context.code() or grpc.StatusCode.OK
            if code == grpc.StatusCode.OK:
                children.sent.inc()
            return response
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            elapsed = time.perf_counter() - start
            self.in_flight.dec()
            children.done(code, elapsed)
            if self.access_log:
                log.info("%s %s %.2f ms", self.method, code.name, elapsed * 1000.0, extra={"request_id": request_id})
            REQUEST_ID.reset(token)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every call, and names (request id) every unary one; put it outermost.
    The wrapped handler of each method is built on its first call and reused while the handler
    beneath stays the same object (grpcio hands out the one it registered)."""

    def __init__(self, metrics: ServiceMetrics, *, access_log: bool = False) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").rpartition("/")
        kind = _TYPES[(bool(handler.request_streaming), bool(handler.response_streaming))]
        children = _Children(self.metrics, (kind, service, name))
        if kind == "unary":
            return grpc.unary_unary_rpc_method_handler(
                _ObservedUnary(handler.unary_unary, method, children, self.access_log),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        behavior, make = {
            "server_stream": (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
            "client_stream": (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
            "bidi_stream": (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
        }[kind]
        return make(
            self._stream(behavior, children),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @staticmethod
    def _stream(behavior, children: _Children):
        kind = children.labels[0]
        request_streaming = kind in ("client_stream", "bidi_stream")
        response_streaming = kind in ("server_stream", "bidi_stream")

        def counted(requests):
            for request in requests:
                children.received.inc()
                yield request

        def responses(out, context: grpc.ServicerContext, start: float):
            code = grpc.StatusCode.OK
            try:
                for response in out:
                    children.sent.inc()
                    yield response
                # A stream the caller cancelled may still end quietly (health Watch does).
                code = context.code() or (grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED)
            except GeneratorExit:  # the caller went away
                code = context.code() or grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                children.done(code, time.perf_counter() - start)

        def observed(request_or_iterator, context: grpc.ServicerContext):
            start = time.perf_counter()
            children.started.inc()
            if request_streaming:
                request_or_iterator = counted(request_or_iterator)
            else:
                children.received.inc()
            try:
                out = behavior(request_or_iterator, context)
            except BaseException:
                children.done(context.code() or grpc.StatusCode.UNKNOWN, time.perf_counter() - start)
                raise
            if response_streaming:
                return responses(out, context, start)
            code = context.code() or grpc.StatusCode.OK
            if code == grpc.StatusCode.OK:
                children.sent.inc()
            children.done(code, time.perf_counter() - start)
            return out

        return observed


def serve_registry(registry, port: int, host: str = "0.0.0.0") -> WSGIServer:
    """Serves `registry` over HTTP on a daemon thread; `.server_port` is the bound port.
    `host` is written as for gRPC: "127.0.0.1", "::1" or "[::1]", "[::]" (every interface;
    like gRPC, 0.0.0.0 where this machine has no IPv6)."""
    addr = host.strip("[]")
    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError:
        if addr != "::":
            raise
        server, _thread = start_http_server(port, addr="0.0.0.0", registry=registry)
    return server


def supervisor_registry(path: str, worker_pids: Callable[[], list[int]]) -> CollectorRegistry:
    """What a multi-process server's supervisor serves: its workers' metrics from the
    multiprocess files in `path`, summed, and process_* over itself and `worker_pids()`."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    PlatformCollector(registry=registry)
    registry.register(_ProcessGroupCollector(worker_pids))
    return registry


class _ProcessGroupCollector:
    """process_* of the supervisor plus its workers (see the module docstring)."""

    SUMMED = (
        "process_cpu_seconds_total",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_open_fds",
    )

    def __init__(self, worker_pids: Callable[[], list[int]]) -> None:
        self.worker_pids = worker_pids
        self.own = ProcessCollector(registry=None)

    def collect(self):
        families = list(self.own.collect())
        extra: dict[str, float] = {}
        for pid in self.worker_pids():
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                for sample in family.samples:
                    if sample.name in self.SUMMED:
                        extra[sample.name] = extra.get(sample.name, 0.0) + sample.value
        for family in families:
            if not any(s.name in self.SUMMED for s in family.samples):
                yield family
                continue
            kind = CounterMetricFamily if family.type == "counter" else GaugeMetricFamily
            value = sum(s.value for s in family.samples) + extra.get(family.samples[0].name, 0.0)
            yield kind(family.name, family.documentation + " (supervisor and workers)", value=value)
