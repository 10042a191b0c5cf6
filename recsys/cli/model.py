"""`recsys publish` and `recsys model status | load | rollback | rollout | promote | abort`: a
model repository and the running inference server that serves from it."""

from __future__ import annotations

import json

import click

from recsys.cli._options import FILE, INFERENCE_SERVER


@click.command()
@click.option("--artifact", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--repo", required=True, type=click.Path(file_okay=False), help="Model repository (created if missing).")
@click.option("--model", "model_name", help="Model name in the repository. Default: the artifact's model kind.")
def publish(artifact, repo, model_name) -> None:
    """Add an artifact to a model repository as the model's next version (atomically); print it.

    A server started with `serve inference --repo REPO --model NAME` checks the new version
    and swaps to it without dropping a request (or keeps the old one if a check fails).
    """
    from inference_server.repository import ModelRepository
    from recsys.artifact import read_manifest

    try:
        name = model_name or read_manifest(artifact).model_kind
        repository = ModelRepository(repo)
        version = repository.publish(artifact, name)
    except OSError as exc:  # copying into the repository
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"model": name, "version": version, "path": str(repository.path(name, version))}))


@click.group()
def model() -> None:
    """Operate a running inference server's model repository: status, load a version, roll back,
    roll a version out (canary or shadow), promote or abort it."""


def _admin_options(command):
    for option in reversed(
        [
            click.option("--server", default=INFERENCE_SERVER, show_default=True, help="Inference server HOST:PORT."),
            click.option("--token", envvar="RECSYS_TOKEN", show_envvar=True, help="Bearer token to send."),
            click.option("--tls-ca", type=FILE, help="Use TLS, trusting this CA (PEM)."),
            click.option(
                "--timeout",
                default=60.0,
                show_default=True,
                type=float,
                help="Seconds (loading and checking a version takes a while).",
            ),
        ]
    ):
        command = option(command)
    return command


def _admin_call(server: str, token: str | None, tls_ca: str | None, timeout: float, call) -> None:
    """`call(client)` on a `RecsysClient` of `server`; prints the response as one JSON line."""
    from google.protobuf.json_format import MessageToDict

    from recsys.client import RecsysClient
    from recsys.errors import RecsysError

    with RecsysClient(server, tls_ca=tls_ca, token=token, timeout_s=timeout) as client:
        try:
            response = call(client)
        except RecsysError as exc:
            raise click.ClickException(f"{server}: {exc.code.name}: {exc}") from None
    click.echo(json.dumps(MessageToDict(response, always_print_fields_with_no_presence=True)))


@model.command("status")
@_admin_options
def status(server, token, tls_ca, timeout) -> None:
    """The version serving now, the policy, the repository's versions (rejected ones with why)
    and the running or last rollout with its counters."""
    _admin_call(server, token, tls_ca, timeout, lambda client: client.model_status().raw)


@model.command("load")
@click.argument("version", type=click.IntRange(min=0))
@_admin_options
def load(version, server, token, tls_ca, timeout) -> None:
    """Check VERSION beside the served one, swap to it and pin it (0: follow the newest again)."""
    _admin_call(server, token, tls_ca, timeout, lambda client: client.load_model_version(version).raw)


@model.command("rollback")
@click.option(
    "--version",
    "version",
    default=0,
    type=click.IntRange(min=0),
    help="Roll back to this version (default: the one served before the current one).",
)
@_admin_options
def rollback(version, server, token, tls_ca, timeout) -> None:
    """Serve (and pin) the previously served version again."""
    _admin_call(server, token, tls_ca, timeout, lambda client: client.rollback_model(version).raw)


@model.command("rollout")
@click.argument("version", type=click.IntRange(min=0))
@click.option(
    "--canary",
    "fraction",
    type=click.FloatRange(min=0, max=1, min_open=True),
    help="Let VERSION answer this share of users (the same users every time). Default: 0.05.",
)
@click.option("--shadow", is_flag=True, help="Let VERSION score every request in the background only; compare.")
@click.option(
    "--promote-after",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds within its limits (and at least --min-requests answers) after which it is promoted; 0: by `promote`.",
)
@click.option("--max-error-rate", type=click.FloatRange(min=0), help="Roll back above this share of failed answers.")
@click.option("--max-p99-ms", type=click.FloatRange(min=0), help="Roll back above this p99 latency.")
@click.option("--min-overlap", type=click.FloatRange(min=0, max=1), help="Roll back below this mean top-10 overlap.")
@click.option("--min-requests", type=click.IntRange(min=1), help="Answers before the limits above apply.")
@_admin_options
def rollout(
    version,
    fraction,
    shadow,
    promote_after,
    max_error_rate,
    max_p99_ms,
    min_overlap,
    min_requests,
    server,
    token,
    tls_ca,
    timeout,
) -> None:
    """Check VERSION beside the served one and roll it out: canary (default) or --shadow.

    Limits left unset come from the artifact (manifest training["rollout"]) or the defaults;
    crossing one rolls VERSION back automatically. VERSION 0: the newest not serving nor rejected.
    """
    if shadow and fraction is not None:
        raise click.UsageError("--canary and --shadow exclude each other")
    limits = {
        "max_error_rate": max_error_rate,
        "max_p99_ms": max_p99_ms,
        "min_overlap": min_overlap,
        "min_requests": min_requests,
    }

    def start(client):
        from recsys.v1 import admin_pb2

        mode = "shadow" if shadow else "canary"
        started = client.start_rollout(version, mode, fraction or 0.0, promote_after, limits=limits)
        return admin_pb2.StartRolloutResponse(rollout=started.raw)

    _admin_call(server, token, tls_ca, timeout, start)


@model.command("promote")
@_admin_options
def promote(server, token, tls_ca, timeout) -> None:
    """Serve the running rollout's version from now on."""
    _admin_call(server, token, tls_ca, timeout, lambda client: client.promote_rollout().raw)


@model.command("abort")
@click.option("--reason", default="", help="Recorded as why the version was rejected.")
@_admin_options
def abort(reason, server, token, tls_ca, timeout) -> None:
    """Drop the running rollout's version (rejected: the watcher does not try it again)."""
    _admin_call(server, token, tls_ca, timeout, lambda client: client.abort_rollout(reason).raw)
