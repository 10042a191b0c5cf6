"""OpenTelemetry traces across client -> inference server -> feature service (optional).

`setup_tracing(service)` turns tracing on only where the standard environment asks for it
(`OTEL_TRACES_EXPORTER=console`, or `otlp` with an OTLP exporter package installed;
`OTEL_SERVICE_NAME` overrides the name) and the `otel` extra is installed; otherwise it does
nothing and returns False. When on, every gRPC server and client channel created afterwards
is instrumented, so a request's trace context crosses both hops, and `span(name)` records a
child span of the current request. Health checks are not traced. One tracer provider serves
the process: a second setup adds its exporter to the first one's provider.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

__all__ = ["setup_tracing", "span", "teardown_tracing"]

log = logging.getLogger(__name__)

_tracer: Any = None  # set while tracing is on; `span` is free otherwise
_instrumentors: list[Any] = []
_processors: list[Any] = []


def _exporter_from_env() -> Any:
    """The span exporter `OTEL_TRACES_EXPORTER` names, or None (unset, `none`, or not installed)."""
    names = {n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")} - {"", "none"}
    if "otlp" in names:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                OTLPSpanExporter = None
        if OTLPSpanExporter is not None:
            return OTLPSpanExporter()
        log.warning("OTEL_TRACES_EXPORTER=otlp but no OTLP exporter package is installed: not tracing")
    if "console" in names:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    return None


def setup_tracing(service_name: str, *, exporter: Any = None) -> bool:
    """Instruments gRPC servers and client channels created from now on and returns True, when
    the environment asks for traces (or `exporter` is given: tests pass an in-memory one, whose
    spans are exported synchronously); False, changing nothing, otherwise."""
    global _tracer
    if exporter is None and not os.environ.get("OTEL_TRACES_EXPORTER"):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient, GrpcInstrumentorServer, filters
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        log.debug("tracing off: %s (install recsys[otel])", exc)
        return False
    if exporter is not None:
        processor = SimpleSpanProcessor(exporter)
    else:
        exporter = _exporter_from_env()
        if exporter is None:
            return False
        processor = BatchSpanProcessor(exporter)
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        # the client instrumentation reads the global provider, so this one becomes it
        provider = TracerProvider(
            resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name})
        )
        trace.set_tracer_provider(provider)
    provider.add_span_processor(processor)
    _processors.append(processor)
    not_health = filters.negate(filters.health_check())
    for instrumentor in (GrpcInstrumentorServer(filter_=not_health), GrpcInstrumentorClient(filter_=not_health)):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
            _instrumentors.append(instrumentor)
    _tracer = provider.get_tracer(__name__)
    log.info("tracing on: %s", type(exporter).__name__)
    return True


def teardown_tracing() -> None:
    """Undoes `setup_tracing`: uninstruments gRPC (a process-wide patch) and flushes and shuts
    its exporters down. Servers and channels created while it was on stay instrumented."""
    global _tracer
    _tracer = None
    while _instrumentors:
        _instrumentors.pop().uninstrument()
    while _processors:
        _processors.pop().shutdown()


def span(name: str) -> contextlib.AbstractContextManager:
    """A child span of the current one while tracing is on; a no-op otherwise."""
    return _tracer.start_as_current_span(name) if _tracer is not None else contextlib.nullcontext()
