"""`recsys features load | contract | remove-feature | release | forget | forgotten | update`:
manage the online feature store."""

from __future__ import annotations

import json

import click

from recsys.cli._options import (
    FILE,
    STORE_HELP,
    client_options,
    columns_option,
    feature_stub,
    pseudonym,
    read_rows,
    rpc,
)

UPDATE_BATCH = 1000  # feature rows per Update*Features call


@click.group()
def features() -> None:
    """Manage the online feature store: load artifacts, forget users."""


def _open_store(url: str):
    from feature_service.stores import open_store

    return open_store(url)


def load_mode_option(f):
    """--replace / --merge: what to do with a store that holds another dataset."""
    return click.option(
        "--replace",
        "load_mode",
        flag_value="replace",
        help="Empty the store first (features, events, tombstones) if it holds another dataset's data.",
    )(
        click.option(
            "--merge",
            "load_mode",
            flag_value="merge",
            help="Add to a store that holds another dataset (ids shared by both then mix).",
        )(click.option("--add", "load_mode", flag_value="add", default=True, hidden=True)(f))
    )


@features.command("load")
@click.option("--artifact", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--store", required=True, help=STORE_HELP)
@load_mode_option
@click.option(
    "--progress/--quiet",
    default=None,
    help="Show the progress bar on stderr, or not (default: only when stderr is a terminal; "
    "the JSON report on stdout is printed either way).",
)
def load(artifact, store, load_mode, progress) -> None:
    """Write an artifact's users, items and histories into a store (idempotent) and add its
    features to the store's contract; print what was written. A running feature service on
    the same store serves the new items, users and features within seconds, with no restart.
    Rows changed in the store after the artifact was exported are kept. A progress bar on
    stderr shows the events written, of how many, and events/s."""
    import sys

    from feature_service.loader import load_artifact

    bar = EventProgress() if (sys.stderr.isatty() if progress is None else progress) else None
    try:
        with _open_store(store) as opened:
            report = load_artifact(opened, artifact, mode=load_mode, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    click.echo(json.dumps(report.to_dict()))


class EventProgress:
    """Events done / total and events/s on stderr: redrawn in place on a terminal, a line every
    `every` seconds (and at the end) otherwise, so logs stay readable."""

    def __init__(self, every: float = 10.0, stream=None, clock=None) -> None:
        import sys
        import time

        self._stream = stream or sys.stderr
        self._clock = clock or time.monotonic
        self._tty = self._stream.isatty()
        self._every = 0.2 if self._tty else every
        self._start = self._clock()
        self._shown = -1.0
        self._line = ""

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if done < total and now - self._shown < self._every:
            return
        self._shown = now
        elapsed = now - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        share = done / total if total else 1.0
        width = 30
        filled = int(width * share)
        self._line = (
            f"events [{'#' * filled}{'-' * (width - filled)}] {done:,}/{total:,} ({share:.0%}) {rate:,.0f} events/s"
        )
        if self._tty:
            self._stream.write("\r" + self._line)
        else:
            self._stream.write(self._line + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._tty and self._line:
            self._stream.write("\n")
            self._stream.flush()


@features.command("contract")
@click.option("--store", required=True, help=STORE_HELP)
def contract(store) -> None:
    """Print the raw features the store serves and the models registered as reading them."""
    from feature_service.loader import registered_models, stored_contract

    with _open_store(store) as opened:
        served = stored_contract(opened)
        models = registered_models(opened)
    shown = {**served.to_dict(), "hash": served.hash, "models": {v: n.to_dict() for v, n in sorted(models.items())}}
    click.echo(json.dumps(shown, indent=2))


@features.command("remove-feature")
@click.option("--store", required=True, help=STORE_HELP)
@click.argument("feature", metavar="user:NAME|item:NAME")
def remove_feature(store, feature) -> None:
    """Stop serving a raw feature; refused while a registered model reads it."""
    from feature_service.loader import remove_feature as remove

    side, _, name = feature.partition(":")
    if not name:
        raise click.BadParameter("give the side and the name, e.g. user:age or item:genres", param_hint="FEATURE")
    with _open_store(store) as opened:
        smaller = remove(opened, side, name)
    click.echo(f"{side} feature {name!r} removed; contract {smaller.hash}")


@features.command("release")
@click.option("--store", required=True, help=STORE_HELP)
@click.argument("model_versions", nargs=-1, required=True)
def release(store, model_versions) -> None:
    """Unregister models no server serves any more, so the features only they read can be removed."""
    from feature_service.loader import release_model

    with _open_store(store) as opened:
        for version in model_versions:
            click.echo(json.dumps({"model_version": version, "released": release_model(opened, version)}))


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


@features.command("update")
@click.option("--features", "target", required=True, help="Feature service HOST:PORT.")
@click.option(
    "--users", type=click.File("r", encoding="utf-8"), help="User table: user_id + feature columns ('-': stdin)."
)
@click.option(
    "--items", type=click.File("r", encoding="utf-8"), help="Item table: item_id + feature columns ('-': stdin)."
)
@columns_option
@client_options
def update(target, users, items, columns, security, timeout) -> None:
    """Replace the feature rows of a table's users or items in a running feature service, in
    batches of 1000; print how many rows were new or changed. Each column is sent as the kind
    the service's contract gives it (GetSchema): numbers for numeric features, '|'-separated
    values for multi_categorical ones; a blank cell leaves that feature out of the row."""
    if (users is None) == (items is None):
        raise click.UsageError("give one of --users CSV or --items CSV")
    from recsys.schema import FeatureContract
    from recsys.v1 import features_pb2

    side, table = ("user", users) if users is not None else ("item", items)
    key = f"{side}_id"
    updated = 0
    with feature_stub(target, security) as stub:
        reply = rpc(target, stub.GetSchema, features_pb2.GetSchemaRequest(), timeout)
        kinds = FeatureContract.from_json(reply.schema_json).side(side)
        method = stub.UpdateUserFeatures if side == "user" else stub.UpdateItemFeatures
        request = features_pb2.UpdateUserFeaturesRequest if side == "user" else features_pb2.UpdateItemFeaturesRequest
        batch: list = []
        for line, row in enumerate(read_rows(table, columns, (key,), table.name), start=2):
            batch.append(_feature_row(row, key, kinds, f"{table.name}, row {line}"))
            if len(batch) == UPDATE_BATCH:
                updated += rpc(target, method, request(rows=batch), timeout).updated
                batch.clear()
        if batch:
            updated += rpc(target, method, request(rows=batch), timeout).updated
    click.echo(json.dumps({"updated": updated}))


def _feature_row(row: dict[str, str], key: str, kinds, where: str):
    """One FeatureRow from a table row of text cells, typed by the contract's `kinds`."""
    from recsys.feature_values import to_proto
    from recsys.schema import FeatureKind
    from recsys.v1 import features_pb2

    if not row.get(key):
        raise ValueError(f"{where}: no {key}")
    features = {}
    for name, text in row.items():
        if name == key or not text:
            continue
        kind = kinds.get(name)
        if kind is None:
            raise ValueError(f"{where}: the service serves no feature {name!r}; it serves {sorted(kinds)}")
        if kind is FeatureKind.NUMERIC:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{where}: {name} is numeric, got {text!r}") from None
        elif kind is FeatureKind.MULTI_CATEGORICAL:
            value = [part.strip() for part in text.split("|") if part.strip()]
        else:
            value = text
        features[name] = to_proto(value, kind)
    return features_pb2.FeatureRow(id=row[key], features=features)
