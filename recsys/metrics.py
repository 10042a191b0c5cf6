"""Prometheus metrics for the services, and the interceptor that records every call.

Each server owns one `ServiceMetrics` with its own registry (so two servers in one process, as
in the tests, do not share counters) and may expose it over HTTP (`serve_http`, the text
format at any path, e.g. /metrics). Every service has:

    recsys_grpc_requests_total{method, code}       calls answered, by gRPC status code
    recsys_grpc_request_seconds{method}            latency histogram per RPC
    recsys_grpc_in_flight                          calls being served now

and the inference server adds (`InferenceMetrics`):

    recsys_model_info{model_version, version}      1 for the version serving now
    recsys_model_serving_version                   its repository version (0: plain artifact)
    recsys_model_swaps_total{outcome}              versions swapped in / rejected
    recsys_feature_fetch_seconds{method, code}     calls to the feature service
    recsys_degraded_responses_total{rpc, source}   answers from a fallback (the fallback count)
    recsys_feature_service_up                      1 while the feature service answers
    recsys_batch_runs_total, recsys_batch_rows_total   micro-batching (--batch-max): ONNX
                                                   Runtime runs and the rows they held; their
                                                   rates' ratio is the mean batch size

Calls refused by the
server's concurrency limit (load shedding) never reach an interceptor: gRPC answers them
RESOURCE_EXHAUSTED itself, and they show only on the client side.

The same interceptor gives each call its request id (`recsys.logs.REQUEST_ID`): the caller's
`x-request-id` metadata when it sent a usable one, else a new one; the id goes back to the
caller as initial metadata, and with `access_log` each call is logged once (method, code,
milliseconds) under its id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import start_http_server

from recsys.logs import REQUEST_ID, REQUEST_ID_HEADER, clean_request_id

__all__ = ["LATENCY_BUCKETS", "InferenceMetrics", "MetricsInterceptor", "ServiceMetrics"]

log = logging.getLogger("recsys.access")

# Seconds: sub-millisecond model calls up to a feature service timing out.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """One service's registry and the per-call metrics every service has."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_grpc_requests",
            "gRPC calls answered, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_grpc_request_seconds",
            "gRPC call latency in seconds, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("recsys_grpc_in_flight", "gRPC calls being served", registry=self.registry)
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
        addr = host.strip("[]")
        try:
            server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError:
            if addr != "::":
                raise
            server, _thread = start_http_server(port, addr="0.0.0.0", registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class InferenceMetrics(ServiceMetrics):
    """`ServiceMetrics` plus the inference server's model, feature and fallback metrics."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.model_info = Gauge(
            "recsys_model_info", "1 for the model version serving now", ["model_version", "version"], registry=r
        )
        self.serving_version = Gauge(
            "recsys_model_serving_version", "repository version serving now (0: a plain artifact)", registry=r
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
        self.feature_up = Gauge("recsys_feature_service_up", "1 while the feature service answers", registry=r)
        self.failures = Counter(
            "recsys_failures",
            "work that failed and was answered around: non-finite model scores, item feature refreshes, "
            "feature answers over the message limit",
            ["cause"],
            registry=r,
        )

    def model_changed(self, label: str, version: int | None) -> None:
        self.model_info.clear()
        self.model_info.labels(label, str(version or 0)).set(1)
        self.serving_version.set(version or 0)
        self.swaps.labels("swapped").inc()

    def model_rejected(self, _version: int, _reason: str) -> None:
        self.swaps.labels("rejected").inc()

    def feature_call(self, method: str, seconds: float, code: str) -> None:
        self.feature_fetch.labels(method, code).observe(seconds)

    def degraded_answer(self, rpc: str, source: str) -> None:
        self.degraded.labels(rpc, source).inc()

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


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts, times and names (request id) every unary call; put it outermost."""

    def __init__(self, metrics: ServiceMetrics, *, access_log: bool = False) -> None:
        self.metrics = metrics
        self.access_log = access_log

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        incoming = dict(handler_call_details.invocation_metadata or ()).get(REQUEST_ID_HEADER)
        behavior = handler.unary_unary
        metrics = self.metrics
        access_log = self.access_log

        def observed(request, context: grpc.ServicerContext):
            request_id = clean_request_id(incoming)
            token = REQUEST_ID.set(request_id)
            start = time.perf_counter()
            metrics.in_flight.inc()
            code = grpc.StatusCode.OK
            try:
                context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
                response = behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                elapsed = time.perf_counter() - start
                metrics.in_flight.dec()
                metrics.requests.labels(method, code.name).inc()
                metrics.latency.labels(method).observe(elapsed)
                if access_log:
                    log.info("%s %s %.2f ms", method, code.name, elapsed * 1000.0, extra={"request_id": request_id})
                REQUEST_ID.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
