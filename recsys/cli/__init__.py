"""The `recsys` command: one module per command group, each only parsing and dispatching.

Heavy modules (torch, ONNX Runtime, grpc, pandas) load inside the commands, so `recsys --help`
stays instant. A command lets `RecsysError` and `ValueError` propagate: `RecsysGroup` turns them
into one `Error: ...` line and exit status 1, once for every command.
"""

from __future__ import annotations

import sys

import click

from recsys.cli import data, features, model, pseudonym, recommend, serve, train
from recsys.cli.events import events as events_group
from recsys.cli.http import serve_http
from recsys.cli.train import _without_nproc  # noqa: F401  (tests/trainer/test_distributed.py imports it here)

__all__ = ["RecsysGroup", "main"]


class RecsysGroup(click.Group):
    """A click group that reports domain errors (`RecsysError`, `ValueError`) without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if isinstance(exc, ValueError) or _is_recsys_error(exc):
                raise click.ClickException(str(exc)) from None
            raise


def _is_recsys_error(exc: Exception) -> bool:
    # Only code that imported recsys.errors can raise a RecsysError; importing it here would
    # load grpc into every command.
    errors = sys.modules.get("recsys.errors")
    return errors is not None and isinstance(exc, errors.RecsysError)


@click.group(cls=RecsysGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recsys")
def main() -> None:
    """recsys: train sequential recommenders, export them to ONNX, serve them over gRPC."""


for _command in (
    data.data,
    train.train,
    train.add_items,
    train.evaluate,
    train.compare,
    serve.serve,
    serve.health,
    features.features,
    events_group,
    model.publish,
    model.model,
    recommend.recommend,
    recommend.explain,
    pseudonym.pseudonym,
):
    main.add_command(_command)
serve.serve.add_command(serve_http)
