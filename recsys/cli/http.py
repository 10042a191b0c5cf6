"""`recsys serve http`: the HTTP/JSON gateway in front of both gRPC services."""

from __future__ import annotations

import os

import click

from recsys.cli._options import FILE, configure_logging


@click.command("http")
@click.option("--inference", "inference_target", required=True, help="Inference server HOST:PORT.")
@click.option("--features", "features_target", required=True, help="Feature service HOST:PORT.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on ([::]: every interface).")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(min=0, max=65535), help="0: any free port."
)
@click.option("--tls-ca", type=FILE, help="Reach both backends over TLS, trusting this CA (PEM).")
@click.option(
    "--token-file",
    type=FILE,
    help="Bearer token (one line) sent to the backends when a request carries no Authorization header. "
    "Default: RECSYS_TOKEN, if set.",
)
@click.option(
    "--timeout",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Deadline of a backend call when the request gives no ?timeout=.",
)
@click.option("--max-body-mb", default=4, show_default=True, type=click.IntRange(min=1), help="Largest request body.")
@click.option("-v", "--verbose", is_flag=True)
def serve_http(
    inference_target, features_target, host, port, tls_ca, token_file, timeout, max_body_mb, verbose
) -> None:
    """Serve JSON over HTTP, calling the inference server and the feature service over gRPC."""
    from recsys.http_gateway import GatewayConfig, serve
    from recsys.security import ClientTls, read_token

    configure_logging(verbose)
    serve(
        GatewayConfig(
            inference_target=inference_target,
            features_target=features_target,
            host=host,
            port=port,
            tls=ClientTls(ca=tls_ca) if tls_ca is not None else None,
            token=read_token(token_file, os.environ.get("RECSYS_TOKEN")),
            default_timeout_s=timeout,
            max_body_bytes=max_body_mb * 1024 * 1024,
        )
    )
