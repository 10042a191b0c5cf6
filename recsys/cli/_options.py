"""Options and helpers several command groups share. Only click at import time: everything
else loads inside the helpers, so `recsys --help` stays instant."""

from __future__ import annotations

import functools

import click

# The servers' defaults, repeated from feature_service/config.py and inference_server/config.py
# (importing those here would load their packages at startup); tests/recsys/test_cli.py keeps
# them equal.
DEFAULT_FEATURES_PORT = 50051
DEFAULT_INFERENCE_PORT = 50052
INFERENCE_SERVER = f"localhost:{DEFAULT_INFERENCE_PORT}"

STORE_HELP = (
    "Online store URL: sqlite://PATH (embedded, persistent; sqlite:///abs/path for an absolute path), "
    "redis://HOST:PORT/DB (shared) or memory:// (lost on exit); ?max_events=N bounds each history."
)
HOST_HELP = (
    "Address to listen on. The default [::] is every interface, IPv6 and (on dual-stack hosts) IPv4 "
    "(what containers need); 127.0.0.1 keeps the server to this machine. Server reflection is on "
    "only on a loopback address or with tokens (--auth-token-file)."
)
METRICS_HOST_HELP = (
    "Address of the metrics endpoint (--metrics-port). Default: the same as --host, so a server kept "
    "to 127.0.0.1 keeps its metrics there too."
)

FILE = click.Path(exists=True, dir_okay=False)  # an existing file (PEM, key, token, table)


def configure_logging(verbose: bool, json_logs: bool = False, log_user_ids: bool = False) -> None:
    from recsys.logs import configure

    configure(verbose=verbose, json_lines=json_logs, log_user_ids=log_user_ids)


def _add(command, options):
    for option in reversed(options):
        command = option(command)
    return command


def server_options(default_port: int):
    """--host/--port, TLS and token flags, operations flags and -v of a `serve` command.

    The command receives them as one `server` dict of the fields both server configs share
    (host, port, security, max_workers, metrics_port, metrics_host, access_log, and
    max_concurrent_rpcs when given); logging is configured before the command runs.
    """

    def decorate(command):
        @functools.wraps(command)
        def run(
            *args,
            host,
            port,
            tls_cert,
            tls_key,
            tls_client_ca,
            auth_token_file,
            metrics_port,
            metrics_host,
            json_logs,
            access_log,
            log_user_ids,
            max_concurrent_rpcs,
            workers,
            verbose,
            **kwargs,
        ):
            configure_logging(verbose, json_logs, log_user_ids)
            server = {
                "host": host,
                "port": port,
                "max_workers": workers,
                "metrics_port": metrics_port,
                "metrics_host": host if metrics_host is None else metrics_host,
                "access_log": access_log,
                "security": server_security(tls_cert, tls_key, tls_client_ca, auth_token_file),
            }
            if max_concurrent_rpcs is not None:
                server["max_concurrent_rpcs"] = max_concurrent_rpcs
            return command(*args, server=server, **kwargs)

        return _add(
            run,
            [
                click.option("--host", default="[::]", show_default=True, help=HOST_HELP),
                click.option("--port", default=default_port, show_default=True, type=int, help="0: any free port."),
                click.option(
                    "--tls-cert", type=FILE, help="Serve TLS with this certificate chain (PEM); needs --tls-key."
                ),
                click.option("--tls-key", type=FILE, help="Private key of --tls-cert (PEM)."),
                click.option(
                    "--tls-client-ca",
                    type=FILE,
                    help="Mutual TLS: require client certificates signed by this CA (PEM).",
                ),
                click.option(
                    "--auth-token-file",
                    type=FILE,
                    help="Require `authorization: Bearer TOKEN` with one of these tokens (one per line; "
                    "health stays open). Default: the comma-separated RECSYS_AUTH_TOKENS, if set.",
                ),
                click.option(
                    "--metrics-port",
                    type=click.IntRange(min=0, max=65535),
                    help="Serve Prometheus metrics over HTTP on this port (text format, any path).",
                ),
                click.option("--metrics-host", help=METRICS_HOST_HELP),
                click.option(
                    "--json-logs",
                    is_flag=True,
                    help="One JSON object per log line (ts, level, logger, message, request_id).",
                ),
                click.option(
                    "--access-log", is_flag=True, help="Log one line per call: method, status code, ms, request id."
                ),
                click.option(
                    "--log-user-ids",
                    is_flag=True,
                    help="Write user ids in clear in logs (default: a keyed hash; key from RECSYS_LOG_KEY).",
                ),
                click.option(
                    "--max-concurrent-rpcs",
                    type=click.IntRange(min=1),
                    help="Calls in flight (running or queued) beyond which new ones get RESOURCE_EXHAUSTED "
                    "(default: 256 inference, 512 features).",
                ),
                click.option(
                    "--workers",
                    default=8,
                    show_default=True,
                    type=click.IntRange(min=1, max=1024),
                    help="Threads serving calls at once (more lets concurrent calls share feature fetches "
                    "and model runs; each costs memory and GIL hand-offs). Streaming calls (health Watch, "
                    "reflection) get max(1, N/4) threads of their own and are refused beyond them.",
                ),
                click.option("-v", "--verbose", is_flag=True),
            ],
        )

    return decorate


def server_security(tls_cert, tls_key, tls_client_ca, auth_token_file):
    """ServerSecurity from the server flags; ValueError for an unreadable or empty token file."""
    from recsys.security import ServerSecurity, ServerTls, read_tokens

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        raise click.UsageError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    tls = ServerTls(tls_cert, tls_key, tls_client_ca) if tls_cert is not None else None
    return ServerSecurity(tls=tls, tokens=read_tokens(auth_token_file))


def client_security(ca, cert, key, token_file, token, *, flags: str):
    """ClientSecurity from client flags; TLS is on when a CA or a client certificate is given."""
    from recsys.security import ClientSecurity, ClientTls, read_token

    if (cert is None) != (key is None):
        raise click.UsageError(f"{flags}: a client certificate and its key go together")
    tls = ClientTls(ca, cert, key) if ca is not None or cert is not None else None
    return ClientSecurity(tls=tls, token=read_token(token_file, token))


def pseudonym(key_file: str | None, user_id: str) -> str:
    """`user_id` as the model knows it: its pseudonym under `key_file`, or itself without one."""
    if key_file is None:
        return user_id
    from recsys.pseudonym import Pseudonymiser

    return Pseudonymiser.from_file(key_file)(user_id)
