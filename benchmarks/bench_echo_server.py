"""A gRPC server that answers fixed methods with fixed bytes and does no work.

The benchmarks run it as the floor of a call on this machine: the same method names, the same
Python gRPC server, the same response bytes (captured from the real service), so what remains
is the cost of one gRPC round trip with a response of that size. `bench_features` answers the
FeatureService look-ups with it, `load` an echo method of its own.

    python -m benchmarks.bench_echo_server --reply SERVICE/METHOD=FILE [--reply ...] [--port P]

Prints `port N` once it serves (`--port 0`, the default: a free port).
"""

from __future__ import annotations

import argparse
from concurrent import futures
from pathlib import Path

import grpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reply",
        action="append",
        required=True,
        metavar="SERVICE/METHOD=FILE",
        help="answer SERVICE/METHOD (e.g. recsys.v1.FeatureService/GetUserFeatures) with FILE's bytes",
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=8, help="the services' default pool size")
    args = parser.parse_args()
    services: dict[str, dict] = {}
    for spec in args.reply:
        name, _, path = spec.partition("=")
        service, _, method = name.rpartition("/")
        if not (service and method and path):
            parser.error(f"--reply {spec!r}: expected SERVICE/METHOD=FILE")
        payload = Path(path).read_bytes()
        # No (de)serialisers: the request is ignored and the reply goes out as the captured bytes.
        services.setdefault(service, {})[method] = grpc.unary_unary_rpc_method_handler(
            lambda request, context, payload=payload: payload
        )
    server = grpc.server(futures.ThreadPoolExecutor(args.workers))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(s, h) for s, h in services.items()])
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"port {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
