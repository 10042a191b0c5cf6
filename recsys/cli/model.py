"""`recsys publish` and `recsys model status | load | rollback`: a model repository and the
running inference server that serves from it."""

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
    from inference_server.model_repository import ModelRepository
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
    """Operate a running inference server's model repository: status, load a version, roll back."""


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


def _admin_call(server: str, method: str, request, token: str | None, tls_ca: str | None, timeout: float) -> None:
    """Calls AdminService.`method` and prints the response as one JSON line."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from recsys.security import ClientSecurity, ClientTls, open_channel
    from recsys.v1 import admin_pb2_grpc

    security = ClientSecurity(tls=ClientTls(tls_ca, None, None) if tls_ca else None, token=token)
    with open_channel(server, security) as channel:
        try:
            response = getattr(admin_pb2_grpc.AdminServiceStub(channel), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise click.ClickException(f"{server}: {exc.code().name}: {exc.details()}") from None
    click.echo(json.dumps(MessageToDict(response, always_print_fields_with_no_presence=True)))


@model.command("status")
@_admin_options
def status(server, token, tls_ca, timeout) -> None:
    """The version serving now, the policy and the repository's versions (rejected ones with why)."""
    from recsys.v1 import admin_pb2

    _admin_call(server, "GetModelStatus", admin_pb2.GetModelStatusRequest(), token, tls_ca, timeout)


@model.command("load")
@click.argument("version", type=click.IntRange(min=0))
@_admin_options
def load(version, server, token, tls_ca, timeout) -> None:
    """Check VERSION beside the served one, swap to it and pin it (0: follow the newest again)."""
    from recsys.v1 import admin_pb2

    _admin_call(server, "LoadModelVersion", admin_pb2.LoadModelVersionRequest(version=version), token, tls_ca, timeout)


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
    from recsys.v1 import admin_pb2

    _admin_call(server, "RollbackModel", admin_pb2.RollbackModelRequest(version=version), token, tls_ca, timeout)
