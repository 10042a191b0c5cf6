"""`recsys pseudonym keygen | map`: keyed pseudonyms of user ids (HMAC-SHA256)."""

from __future__ import annotations

import json

import click

from recsys.cli._options import FILE
from recsys.cli._options import pseudonym as pseudonym_of


@click.group()
def pseudonym() -> None:
    """Keyed pseudonyms of user ids (HMAC-SHA256): make a key, map ids."""


@pseudonym.command("keygen")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="New key file (mode 600; never overwritten)."
)
def keygen(out) -> None:
    """Write a new random 32-byte key. Keep it outside artifacts and data directories."""
    from recsys.pseudonym import Pseudonymiser, write_key

    try:
        write_key(out)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; not overwriting a key") from None
    click.echo(json.dumps({"key_file": out, "key_id": Pseudonymiser.from_file(out).key_id}))


@pseudonym.command("map")
@click.option("--key", "key_file", required=True, type=FILE)
@click.argument("user_ids", nargs=-1, required=True)
def map_ids(key_file, user_ids) -> None:
    """Print one JSON line {user_id, pseudonym} per USER_ID."""
    for user_id in user_ids:
        click.echo(json.dumps({"user_id": user_id, "pseudonym": pseudonym_of(key_file, user_id)}))
