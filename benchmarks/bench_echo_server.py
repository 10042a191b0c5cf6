"""A gRPC server that answers FeatureService look-ups with fixed bytes and does no work.

`scripts/bench_features.py` runs it as the floor of a look-up on this machine: the same
method names, the same Python gRPC server, the same response bytes (captured from the real
service), so what remains is the cost of one gRPC round trip with a response of that size.

    python scripts/bench_echo_server.py --port P --users-reply FILE --items-reply FILE
"""

from __future__ import annotations

import argparse
from concurrent import futures
from pathlib import Path

import grpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--users-reply", type=Path, required=True)
    parser.add_argument("--items-reply", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=8, help="the feature service's default pool size")
    args = parser.parse_args()
    users, items = args.users_reply.read_bytes(), args.items_reply.read_bytes()
    server = grpc.server(futures.ThreadPoolExecutor(args.workers))
    # No (de)serialisers: the request is ignored and the reply goes out as the captured bytes.
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("recsys.v1.FeatureService", {
        "GetUserFeatures": grpc.unary_unary_rpc_method_handler(lambda request, context: users),
        "GetItemFeatures": grpc.unary_unary_rpc_method_handler(lambda request, context: items),
    })])
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
