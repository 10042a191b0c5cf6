"""An HTTP/JSON gateway in front of the inference server and the feature service.

A separate process that turns each JSON request into one gRPC call over a channel it keeps
per backend, and the answer back into JSON; the gRPC path itself is untouched. Bodies use
protobuf's canonical JSON mapping: requests accept the lowerCamelCase JSON names (`userId`)
and the proto field names (`user_id`); unknown fields are a 400. Responses use the JSON names
and print every field, defaults included; int64 values are strings, -inf is "-Infinity".

    POST /v1/recommend     RecommendRequest -> RecommendResponse     (InferenceService)
    POST /v1/score         ScoreRequest -> ScoreResponse             (InferenceService)
    POST /v1/interactions  RecordInteractionsRequest -> ...Response  (FeatureService)
    GET  /v1/models        GetModelStatusResponse                    (AdminService)
    GET  /healthz          200 while the gateway runs
    GET  /readyz           200 when both backends' health says SERVING, else 503

Errors answer `{"code": "<gRPC status name>", "message": "..."}` with the HTTP status of
`HTTP_STATUS` (others 500). Deadline: the `timeout` query parameter in seconds, default 2.
Auth: the request's `Authorization` header is forwarded as gRPC metadata; without one, the
gateway's own token (if any) is sent. `openapi()` describes all of it from the descriptors.
"""

from __future__ import annotations

import json
import logging
import math
import re
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import grpc
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.errors import RecsysError
from recsys.security import ClientSecurity, ClientTls, open_channel
from recsys.v1 import admin_pb2, admin_pb2_grpc, features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc

__all__ = ["HTTP_STATUS", "ROUTES", "GatewayConfig", "Route", "create_gateway", "openapi", "serve"]

log = logging.getLogger(__name__)

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,  # the server's state conflicts; 412 is for HTTP conditionals
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_METADATA_VALUE = re.compile(r"^[\x20-\x7e]{1,8192}$")  # printable ASCII: what gRPC metadata carries


_SERVICES = {
    "inference": inference_pb2.DESCRIPTOR.services_by_name["InferenceService"],
    "admin": admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
    "features": features_pb2.DESCRIPTOR.services_by_name["FeatureService"],
}


@dataclass(frozen=True)
class Route:
    """One endpoint: `rpc` of `service` (a key of `_SERVICES`), its request built from the JSON
    body (GET: an empty request)."""

    method: str
    path: str
    service: str
    rpc: str
    summary: str

    @property
    def request(self) -> type:
        return message_factory.GetMessageClass(_SERVICES[self.service].methods_by_name[self.rpc].input_type)

    @property
    def response(self) -> type:
        return message_factory.GetMessageClass(_SERVICES[self.service].methods_by_name[self.rpc].output_type)


ROUTES = (
    Route("POST", "/v1/recommend", "inference", "Recommend", "Top-k items for a user, best first."),
    Route("POST", "/v1/score", "inference", "Score", "Scores of given items for a user, in the order of itemIds."),
    Route(
        "POST",
        "/v1/interactions",
        "features",
        "RecordInteractions",
        "Appends behaviour events to users' histories; durable once it answers 200.",
    ),
    Route("GET", "/v1/models", "admin", "GetModelStatus", "The model served now, its policy and the versions held."),
)
_PATHS = {r.path: r for r in ROUTES} | {"/healthz": None, "/readyz": None}


@dataclass(frozen=True)
class GatewayConfig:
    inference_target: str  # HOST:PORT of the inference server (also serves AdminService)
    features_target: str  # HOST:PORT of the feature service
    host: str = "127.0.0.1"  # address to listen on
    port: int = 8080  # 0: any free port
    tls: ClientTls | None = None  # reach both backends over TLS
    token: str | None = field(default=None, repr=False)  # sent when the request carries no Authorization
    default_timeout_s: float = 2.0  # deadline of a call without ?timeout=
    max_timeout_s: float = 30.0  # largest ?timeout= accepted
    max_body_bytes: int = 4 * 1024 * 1024  # larger bodies get 413
    readiness_timeout_s: float = 1.0  # per backend health check in /readyz


class _Error(RecsysError):
    """An HTTP error answer: `status`, and `name`, the gRPC status name its body carries."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status, self.name, self.message = status, name, message


class _Backends:
    """One channel per backend, kept for the gateway's life, and the stubs' multicallables."""

    def __init__(self, config: GatewayConfig) -> None:
        security = ClientSecurity(tls=config.tls)  # the token goes per call: a caller's header wins
        self.inference = open_channel(config.inference_target, security)
        self.features = open_channel(config.features_target, security)
        stubs = {
            "inference": inference_pb2_grpc.InferenceServiceStub(self.inference),
            "admin": admin_pb2_grpc.AdminServiceStub(self.inference),
            "features": features_pb2_grpc.FeatureServiceStub(self.features),
        }
        self.calls: dict[str, Callable] = {r.path: getattr(stubs[r.service], r.rpc) for r in ROUTES}
        self.health = {
            "inference": health_pb2_grpc.HealthStub(self.inference),
            "features": health_pb2_grpc.HealthStub(self.features),
        }

    def close(self) -> None:
        self.inference.close()
        self.features.close()


def _handler(config: GatewayConfig, backends: _Backends) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one TCP connection for many requests
        disable_nagle_algorithm = True  # headers and body leave at once, no delayed-ACK stall
        server_version = "recsys-gateway"

        def log_message(self, format, *args) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _dispatch(self) -> None:
            try:
                status, body = self._answer()
            except _Error as exc:
                status, body = exc.status, {"code": exc.name, "message": exc.message}
            except Exception:
                log.exception("%s %s failed", self.command, self.path)
                status, body = 500, {"code": "INTERNAL", "message": "internal gateway error"}
            self._send(status, body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

        def _answer(self) -> tuple[int, dict]:
            url = urlsplit(self.path)
            if url.path not in _PATHS:
                self.close_connection = True  # an unread body may follow
                raise _Error(404, "NOT_FOUND", f"no endpoint {url.path}")
            route = _PATHS[url.path]
            if self.command != (route.method if route else "GET"):
                self.close_connection = True
                raise _Error(405, "UNIMPLEMENTED", f"{url.path} takes {route.method if route else 'GET'}")
            if url.path == "/healthz":
                return 200, {"status": "SERVING"}
            if url.path == "/readyz":
                return self._ready()
            timeout = self._timeout(url.query)
            request = route.request()
            if route.method == "POST":
                self._parse(self._body(), request)
            try:
                response = backends.calls[route.path](request, timeout=timeout, metadata=self._metadata())
            except grpc.RpcError as exc:
                code = exc.code()
                raise _Error(HTTP_STATUS.get(code, 500), code.name, exc.details() or code.name) from None
            return 200, json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

        def _ready(self) -> tuple[int, dict]:
            states = {}
            for name, stub in backends.health.items():
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=config.readiness_timeout_s).status
                    states[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                except grpc.RpcError as exc:
                    states[name] = exc.code().name
            ready = all(s == "SERVING" for s in states.values())
            return (200 if ready else 503), states

        def _timeout(self, query: str) -> float:
            values = parse_qs(query).get("timeout")
            if not values:
                return config.default_timeout_s
            try:
                timeout = float(values[-1])
            except ValueError:
                timeout = math.nan
            if not 0 < timeout <= config.max_timeout_s:
                raise _Error(400, "INVALID_ARGUMENT", f"timeout must be seconds in (0, {config.max_timeout_s:g}]")
            return timeout

        def _body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None:
                self.close_connection = True
                raise _Error(411, "INVALID_ARGUMENT", "send a Content-Length (chunked bodies are not taken)")
            if not length.isdigit():
                self.close_connection = True
                raise _Error(400, "INVALID_ARGUMENT", "bad Content-Length")
            if int(length) > config.max_body_bytes:
                self.close_connection = True
                raise _Error(413, "RESOURCE_EXHAUSTED", f"body over {config.max_body_bytes} bytes")
            return self.rfile.read(int(length))

        @staticmethod
        def _parse(body: bytes, request) -> None:
            try:
                text = body.decode("utf-8").strip() or "{}"
                if not text.startswith("{"):
                    raise ValueError("the body must be a JSON object")
                json_format.Parse(text, request)
            # UnicodeDecodeError is a ValueError; RecursionError: nesting too deep for json.loads
            except (ValueError, RecursionError, json_format.ParseError) as exc:
                raise _Error(400, "INVALID_ARGUMENT", f"bad JSON body: {exc}") from None

        def _metadata(self) -> list[tuple[str, str]]:
            metadata = []
            auth = self.headers.get("Authorization")
            if auth is None and config.token:
                auth = f"Bearer {config.token}"
            for key, value in (("authorization", auth), ("x-request-id", self.headers.get("X-Request-Id"))):
                if value is None:
                    continue
                if not _METADATA_VALUE.match(value):
                    raise _Error(400, "INVALID_ARGUMENT", f"bad {key} header")
                metadata.append((key, value))
            return metadata

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 405:
                route = _PATHS.get(urlsplit(self.path).path)
                self.send_header("Allow", route.method if route else "GET")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, handler, backends: _Backends) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.backends = backends

    def server_close(self) -> None:
        super().server_close()
        self.backends.close()


def create_gateway(config: GatewayConfig) -> tuple[ThreadingHTTPServer, int]:
    """A bound, not yet serving gateway and its port: call `serve_forever()` (in a thread for
    tests), then `shutdown()` and `server_close()` (which closes the backend channels too)."""
    backends = _Backends(config)
    try:
        server = _Server((config.host.strip("[]"), config.port), _handler(config, backends), backends)
    except BaseException:
        backends.close()
        raise
    return server, server.server_address[1]


def serve(config: GatewayConfig) -> None:
    """Runs the gateway until SIGTERM/SIGINT."""
    server, port = create_gateway(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="http-gateway", daemon=True)
    thread.start()
    print(f"HTTP gateway listening on {config.host}:{port}", flush=True)
    log.info(
        "HTTP gateway on %s:%d: inference %s, features %s",
        config.host,
        port,
        config.inference_target,
        config.features_target,
    )
    stop.wait()
    server.shutdown()
    server.server_close()


# -- OpenAPI ---------------------------------------------------------------------------------

_FD = pb_descriptor.FieldDescriptor
_SCALARS = {
    _FD.TYPE_STRING: {"type": "string"},
    _FD.TYPE_BOOL: {"type": "boolean"},
    _FD.TYPE_BYTES: {"type": "string", "format": "byte"},
    _FD.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _FD.TYPE_FLOAT: {"type": "number", "format": "float"},
    **{t: {"type": "integer", "format": "int32"} for t in (_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32)},
    **{t: {"type": "integer", "format": "int64"} for t in (_FD.TYPE_UINT32, _FD.TYPE_FIXED32)},
    # the JSON mapping writes 64-bit integers as strings (and reads numbers or strings)
    **{
        t: {"type": "string", "format": "int64"}
        for t in (_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64, _FD.TYPE_UINT64, _FD.TYPE_FIXED64)
    },
}


def _field_schema(f: pb_descriptor.FieldDescriptor, schemas: dict) -> dict:
    if f.type == _FD.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
        value = f.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _field_schema(value, schemas)}
    if f.type == _FD.TYPE_MESSAGE:
        one = {"$ref": f"#/components/schemas/{_message_schema(f.message_type, schemas)}"}
    elif f.type == _FD.TYPE_ENUM:
        one = {"type": "string", "enum": [v.name for v in f.enum_type.values]}
    else:
        one = dict(_SCALARS[f.type])
    if f.type in (_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE):  # NaN and infinities are strings
        one = {"oneOf": [one, {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]}
    return {"type": "array", "items": one} if f.is_repeated else one


def _message_schema(message: pb_descriptor.Descriptor, schemas: dict) -> str:
    """Adds `message` (and what it refers to) to `schemas`; returns its name there."""
    name = message.full_name.removeprefix("recsys.v1.")
    if name not in schemas:
        schemas[name] = {}  # placeholder first: messages may refer to themselves
        properties = {f.json_name: _field_schema(f, schemas) for f in message.fields}
        schema = {"type": "object", "properties": properties, "additionalProperties": False}
        oneofs = [o for o in message.oneofs if not o.name.startswith("_")]  # "_x": proto3 optional
        if oneofs:
            schema["description"] = "; ".join(
                f"at most one of {', '.join(f.json_name for f in o.fields)}" for o in oneofs
            )
        schemas[name] = schema
    return name


def openapi() -> dict:
    """The OpenAPI 3.0 document of the gateway, built from the proto descriptors."""
    schemas: dict[str, dict] = {}
    error = {
        "type": "object",
        "properties": {"code": {"type": "string", "example": "INVALID_ARGUMENT"}, "message": {"type": "string"}},
        "required": ["code", "message"],
    }
    schemas["Error"] = error
    errors = {
        str(status): {
            "description": desc,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status, desc in [
            *((s, f"gRPC {c.name}") for c, s in HTTP_STATUS.items()),
            (405, "wrong method"),
            (411, "no Content-Length"),
            (413, "body too large"),
            (500, "any other gRPC status"),
        ]
    }
    timeout = {
        "name": "timeout",
        "in": "query",
        "required": False,
        "schema": {
            "type": "number",
            "default": GatewayConfig.default_timeout_s,
            "exclusiveMinimum": True,
            "minimum": 0,
        },
        "description": "Deadline of the backend call, in seconds.",
    }
    paths: dict[str, dict] = {}
    for r in ROUTES:
        ok = {"$ref": f"#/components/schemas/{_message_schema(r.response.DESCRIPTOR, schemas)}"}
        operation = {
            "operationId": r.rpc,
            "summary": r.summary,
            "parameters": [timeout],
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ok}}}, **errors},
        }
        if r.method == "POST":
            body = {"$ref": f"#/components/schemas/{_message_schema(r.request.DESCRIPTOR, schemas)}"}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        paths[r.path] = {r.method.lower(): operation}
    probe = {"type": "object", "additionalProperties": {"type": "string"}}
    for path, summary in [
        ("/healthz", "200 while the gateway runs."),
        ("/readyz", "Each backend's gRPC health status; 200 when both are SERVING, else 503."),
    ]:
        answer = {"description": "status", "content": {"application/json": {"schema": probe}}}
        paths[path] = {"get": {"operationId": path.strip("/"), "summary": summary, "responses": {"200": answer}}}
    paths["/readyz"]["get"]["responses"]["503"] = paths["/readyz"]["get"]["responses"]["200"]
    return {
        "openapi": "3.0.3",
        "info": {"title": "recsys HTTP/JSON gateway", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }


def openapi_json() -> str:
    """`openapi()` as written to docs/openapi.json."""
    return json.dumps(openapi(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--openapi"]:
        sys.exit("usage: python -m recsys.http_gateway --openapi > docs/openapi.json")
    sys.stdout.write(openapi_json())
