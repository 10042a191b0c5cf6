"""`recsys features load | forget | forgotten`: manage the online feature store."""

from __future__ import annotations

import json

import click

from recsys.cli._options import FILE, STORE_HELP, pseudonym


@click.group()
def features() -> None:
    """Manage the online feature store: load artifacts, forget users."""


def _open_store(url: str):
    from feature_service.stores import open_store

    return open_store(url)


@features.command("load")
@click.option("--artifact", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--store", required=True, help=STORE_HELP)
def load(artifact, store) -> None:
    """Write an artifact's users, items and histories into a store (idempotent); print what was written."""
    from feature_service.loader import load_artifact

    with _open_store(store) as opened:
        report = load_artifact(opened, artifact)
    click.echo(json.dumps(report.to_dict()))


@features.command("forget")
@click.option("--store", required=True, help=STORE_HELP)
@click.option(
    "--pseudonymise-key", type=FILE, help="USER_IDS are raw ids of a store loaded with pseudonyms under this key."
)
@click.argument("user_ids", nargs=-1, required=True)
def forget(store, pseudonymise_key, user_ids) -> None:
    """Delete everything the store holds about USER_IDS and keep their tombstones."""
    with _open_store(store) as opened:
        for user_id in user_ids:
            stored = pseudonym(pseudonymise_key, user_id)
            found = opened.forget_user(stored)
            shown = {"user_id": user_id, "pseudonym": stored} if pseudonymise_key else {"user_id": user_id}
            click.echo(json.dumps({**shown, "found": found}))


@features.command("forgotten")
@click.option("--store", required=True, help=STORE_HELP)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, writable=True),
    help="JSON lines {user_id, forgotten_at} for the trainer to leave out.",
)
def forgotten(store, out) -> None:
    """Write the users the store has forgotten (tombstones), for the next export to leave out."""
    with _open_store(store) as opened:
        users = opened.forgotten_users()
    with open(out, "w", encoding="utf-8") as f:
        for user_id, at in sorted(users.items()):
            f.write(json.dumps({"user_id": user_id, "forgotten_at": at}, ensure_ascii=False) + "\n")
    click.echo(f"{len(users)} forgotten users written to {out}")
