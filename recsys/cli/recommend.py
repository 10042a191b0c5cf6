"""`recsys recommend | explain`: ask a running inference server for a user's top-k."""

from __future__ import annotations

import dataclasses
import json

import click

from recsys.cli._options import FILE, INFERENCE_SERVER, client_security, pseudonym

PSEUDONYMISE_HELP = "The model was trained with this pseudonymisation key: send the user's pseudonym."


@click.command()
@click.option("--server", default=INFERENCE_SERVER, show_default=True, help="Inference server HOST:PORT.")
@click.option("--user", "user_id", required=True)
@click.option("--k", default=10, show_default=True, type=int)
@click.option("--include-seen", is_flag=True, help="Keep items the user already has.")
@click.option("--timeout", default=5.0, show_default=True, type=float, help="Seconds.")
@click.option("--tls-ca", type=FILE, help="Use TLS, trusting this CA (PEM) for the server's certificate.")
@click.option("--tls-cert", type=FILE, help="Client certificate (PEM) for a server that requires mutual TLS.")
@click.option("--tls-key", type=FILE, help="Key of --tls-cert.")
@click.option(
    "--token",
    envvar="RECSYS_TOKEN",
    show_envvar=True,
    help="Bearer token to send (prefer the environment variable: flags show in `ps`).",
)
@click.option("--token-file", type=FILE, help="File holding the token (one line).")
@click.option("--pseudonymise-key", type=FILE, help=PSEUDONYMISE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as one JSON object (for scripts).")
def recommend(
    server, user_id, k, include_seen, timeout, tls_ca, tls_cert, tls_key, token, token_file, pseudonymise_key, as_json
) -> None:
    """Ask the inference server for a user's top-k and print them."""
    security = client_security(tls_ca, tls_cert, tls_key, token_file, token, flags="--tls-cert/--tls-key")
    from recsys.client import format_recommendations

    response = _recommend(server, security, pseudonym(pseudonymise_key, user_id), k, not include_seen, timeout, False)
    if as_json:
        click.echo(json.dumps({"user_id": user_id, **dataclasses.asdict(response)}, ensure_ascii=False))
        return
    click.echo(format_recommendations(user_id, response))


@click.command()
@click.option("--server", default=INFERENCE_SERVER, show_default=True, help="Inference server HOST:PORT.")
@click.option("--user", "user_id", required=True)
@click.option("--k", default=5, show_default=True, type=int)
@click.option("--include-seen", is_flag=True, help="Keep items the user already has.")
@click.option("--timeout", default=5.0, show_default=True, type=float, help="Seconds.")
@click.option("--tls-ca", type=FILE, help="Use TLS, trusting this CA (PEM).")
@click.option("--token", envvar="RECSYS_TOKEN", show_envvar=True, help="Bearer token to send.")
@click.option("--token-file", type=FILE, help="File holding the token (one line).")
@click.option("--pseudonymise-key", type=FILE, help=PSEUDONYMISE_HELP)
def explain(server, user_id, k, include_seen, timeout, tls_ca, token, token_file, pseudonymise_key) -> None:
    """A user's top-k, each with "because you watched X, Y" (Recommend with explain=true)."""
    security = client_security(tls_ca, None, None, token_file, token, flags="--tls-ca")
    from recsys.client import format_explanations

    response = _recommend(server, security, pseudonym(pseudonymise_key, user_id), k, not include_seen, timeout, True)
    click.echo(format_explanations(user_id, response))


def _recommend(server, security, user_id, k, exclude_seen, timeout, explain):
    """One Recommend through `RecsysClient`; a failure is one `Error: SERVER: CODE: details` line."""
    from recsys.client import RecsysClient
    from recsys.errors import RecsysError

    tls = security.tls
    with RecsysClient(
        server,
        tls_ca=tls and tls.ca,
        client_cert=tls and tls.cert,
        client_key=tls and tls.key,
        token=security.token,
        timeout_s=timeout,
    ) as client:
        try:
            return client.recommend(user_id, k, exclude_seen=exclude_seen, explain=explain)
        except RecsysError as exc:
            raise click.ClickException(f"{server}: {exc.code.name}: {exc}") from None
