"""Options and helpers several command groups share. Only click at import time: everything
else loads inside the helpers, so `recsys --help` stays instant."""

from __future__ import annotations

import contextlib
import functools
import logging

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
    "Address to listen on. Default: 127.0.0.1 (this machine only), or [::] (every interface, IPv6 and "
    "on dual-stack hosts IPv4) when TLS or tokens are on. The images set RECSYS_HOST=[::]; "
    "every interface in plaintext without tokens logs a warning. Server reflection is on only on a "
    "loopback address or with tokens (--auth-token-file)."
)
ALL_INTERFACES = ("[::]", "::", "0.0.0.0", "")
METRICS_HOST_HELP = (
    "Address of the metrics endpoint (--metrics-port). Default: the same as --host, so a server kept "
    "to 127.0.0.1 keeps its metrics there too."
)

PROCESSES_HELP = (
    "Server processes sharing the port (one GIL each), under a supervisor that serves --metrics-port "
    "for all. Default: one per core, at most 8; 1 with a memory:// store or a model repository (--repo), "
    "whose admin calls are refused with several processes. 1: a single process, no supervisor."
)

FILE = click.Path(exists=True, dir_okay=False)  # an existing file (PEM, key, token, table)
COLUMNS_HELP = (
    "Your names for the standard columns, canonical=yours, e.g. "
    "user_id=customer_id,item_id=product_id,timestamp=event_time."
)
DELIMITERS = ",\t;|"  # what a text table may be separated by, detected from its header line


def configure_logging(verbose: bool, json_logs: bool = False, log_user_ids: bool = False) -> None:
    from recsys.logs import configure
    from recsys.processes import remember_logging

    configure(verbose=verbose, json_lines=json_logs, log_user_ids=log_user_ids)
    remember_logging(verbose=verbose, json_lines=json_logs, log_user_ids=log_user_ids)  # for worker processes


def _add(command, options):
    for option in reversed(options):
        command = option(command)
    return command


def listen_host(host: str | None, security) -> str:
    """`--host`, or its default: loopback in plaintext without tokens, every interface otherwise.
    Every interface in plaintext without tokens is allowed, with a warning."""
    open_door = security.tls is None and not security.tokens
    if host is None:
        return "127.0.0.1" if open_door else "[::]"
    if open_door and host in ALL_INTERFACES:
        logging.getLogger("recsys.cli").warning(
            "listening on every interface (%s) in plaintext without tokens: anyone who reaches this port "
            "can call every RPC, the admin service included (--tls-cert/--auth-token-file, or --host 127.0.0.1)",
            host,
        )
    return host


def server_options(default_port: int):
    """--host/--port, TLS and token flags, operations flags and -v of a `serve` command.

    The command receives them as one `server` dict of the fields both server configs share
    (host, port, security, max_workers, metrics_port, metrics_host, access_log, processes, and
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
            processes,
            verbose,
            **kwargs,
        ):
            configure_logging(verbose, json_logs, log_user_ids)
            security = server_security(tls_cert, tls_key, tls_client_ca, auth_token_file)
            host = listen_host(host, security)
            server = {
                "host": host,
                "port": port,
                "max_workers": workers,
                "metrics_port": metrics_port,
                "metrics_host": host if metrics_host is None else metrics_host,
                "access_log": access_log,
                "security": security,
                "processes": processes,
            }
            if max_concurrent_rpcs is not None:
                server["max_concurrent_rpcs"] = max_concurrent_rpcs
            return command(*args, server=server, **kwargs)

        return _add(
            run,
            [
                click.option("--host", envvar="RECSYS_HOST", help=HOST_HELP),
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
                click.option(
                    "--processes",
                    envvar="RECSYS_PROCESSES",
                    show_envvar=True,
                    type=click.IntRange(min=1, max=256),
                    help=PROCESSES_HELP,
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


def parse_columns(ctx, param, value: str | None) -> dict[str, str] | None:
    """`canonical=yours,...` -> {canonical: yours}; click callback of `columns_option`."""
    if not value:
        return None
    mapping: dict[str, str] = {}
    for pair in value.split(","):
        canonical, sep, yours = (part.strip() for part in pair.partition("="))
        if not sep or not canonical or not yours:
            raise click.BadParameter(f"{pair!r} is not canonical=yours (e.g. user_id=customer_id)")
        if canonical in mapping:
            raise click.BadParameter(f"{canonical} is mapped twice")
        mapping[canonical] = yours
    if len(set(mapping.values())) < len(mapping):
        raise click.BadParameter("one of your columns is mapped to two standard names")
    return mapping


def columns_option(command):
    """--columns canonical=yours,...: the command receives `columns` (dict or None)."""
    return click.option("--columns", callback=parse_columns, metavar="NAME=YOURS,...", help=COLUMNS_HELP)(command)


def client_options(command):
    """TLS, token and --timeout flags of a command that calls a server; the command receives
    `security` (a ClientSecurity) and `timeout` (seconds)."""

    @functools.wraps(command)
    def run(*args, tls_ca, tls_cert, tls_key, token, token_file, **kwargs):
        security = client_security(tls_ca, tls_cert, tls_key, token_file, token, flags="--tls-cert/--tls-key")
        return command(*args, security=security, **kwargs)

    return _add(
        run,
        [
            click.option("--timeout", default=30.0, show_default=True, type=float, help="Seconds per call."),
            click.option("--tls-ca", type=FILE, help="Use TLS, trusting this CA (PEM) for the server's certificate."),
            click.option(
                "--tls-cert", type=FILE, help="Client certificate (PEM) for a server that requires mutual TLS."
            ),
            click.option("--tls-key", type=FILE, help="Key of --tls-cert."),
            click.option(
                "--token",
                envvar="RECSYS_TOKEN",
                show_envvar=True,
                help="Bearer token to send (prefer the environment variable: flags show in `ps`).",
            ),
            click.option("--token-file", type=FILE, help="File holding the token (one line)."),
        ],
    )


def sniff_delimiter(header: str, default: str = ",") -> str:
    """The separator of a text table, from its header line: the most frequent of `DELIMITERS`
    (column names rarely hold one), `default` when none occurs."""
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else default


def read_rows(stream, columns: dict[str, str] | None, required: tuple[str, ...], source: str):
    """Dicts of one text table's rows (stripped strings), keyed by standard names.

    `columns` maps standard names to yours; the delimiter is detected from the header line.
    ValueError, naming the columns found and `--columns`, when a required column is absent.
    """
    import csv
    import itertools

    header = stream.readline()
    reader = csv.reader(itertools.chain([header], stream), delimiter=sniff_delimiter(header))
    found = [name.strip() for name in next(reader, [])]
    renames = {yours: canonical for canonical, yours in (columns or {}).items()}
    unknown = sorted(set(renames) - set(found))
    if unknown:
        raise ValueError(f"{source}: --columns names {unknown}, not in the file's columns {found}")
    names = [renames.get(name, name) for name in found]
    missing = [c for c in required if c not in names]
    if missing:
        example = ",".join(f"{c}=YOUR_NAME" for c in missing)
        raise ValueError(f"{source}: no column(s) {missing}; found {found}: name yours with --columns {example}")
    for cells in reader:
        if any(cell.strip() for cell in cells):
            yield {name: cell.strip() for name, cell in zip(names, cells, strict=False)}


@contextlib.contextmanager
def feature_stub(target: str, security):
    """A FeatureService stub on a channel to `target` (TLS and token from `security`), closed on exit."""
    from recsys.security import open_channel
    from recsys.v1 import features_pb2_grpc

    channel = open_channel(target, security)
    try:
        yield features_pb2_grpc.FeatureServiceStub(channel)
    finally:
        channel.close()


def rpc(target: str, method, request, timeout: float):
    """One unary call; a failure is one `Error: TARGET: CODE: details` line."""
    import grpc

    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as exc:
        raise click.ClickException(f"{target}: {exc.code().name}: {exc.details()}") from None


def pseudonym(key_file: str | None, user_id: str) -> str:
    """`user_id` as the model knows it: its pseudonym under `key_file`, or itself without one."""
    if key_file is None:
        return user_id
    from recsys.pseudonym import Pseudonymiser

    return Pseudonymiser.from_file(key_file)(user_id)
