"""The `recsys` command. Only parsing and dispatch: heavy modules load inside each command,
so `recsys --help` stays instant."""

from __future__ import annotations

import json
import logging
import sys

import click

DEFAULT_FEATURES_PORT = 50051
DEFAULT_INFERENCE_PORT = 50052
# trainer.models.MODELS (next-item) and trainer.ranking.RANKERS (feature-based), spelled out so
# `recsys --help` needs no torch (a test keeps them equal)
SEQUENTIAL_MODELS = ["sasrec", "gru4rec", "caser"]
FEATURE_MODELS = ["deepfm", "dcn", "conv_ctr", "rating"]
MODEL_NAMES = SEQUENTIAL_MODELS + FEATURE_MODELS


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recsys")
def main() -> None:
    """recsys: train sequential recommenders, export them to ONNX, serve them over gRPC."""


@main.group()
def data() -> None:
    """Get data sets."""


@data.command("download")
@click.argument("name", type=click.Choice(["movielens-100k"]))
@click.option("--to", "to_dir", required=True, type=click.Path(file_okay=False), help="Directory for the tables.")
def data_download(name: str, to_dir: str) -> None:
    """Download a data set and write interactions.csv, users.csv, items.csv."""
    from trainer.download import download_movielens_100k

    try:
        result = download_movielens_100k(to_dir)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=2))


@data.command("split")
@click.option("--interactions", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def data_split(interactions: str, out_dir: str) -> None:
    """Leave-last-out split: each user's last event (by time) -> test.csv, the rest -> train.csv."""
    from trainer.split import write_leave_last_out

    try:
        click.echo(json.dumps(write_leave_last_out(interactions, out_dir), indent=2))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--interactions", required=True, type=click.Path(exists=True, dir_okay=False),
              help="user_id,item_id,timestamp[,rating] table (CSV, TSV, Parquet, RecBole .inter, GroupLens u.data).")
@click.option("--users", type=click.Path(exists=True, dir_okay=False), help="User feature table keyed by user_id.")
@click.option("--items", type=click.Path(exists=True, dir_okay=False), help="Item feature table keyed by item_id.")
@click.option("--model", default="sasrec", show_default=True, type=click.Choice(MODEL_NAMES))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact directory (replaced atomically).")
@click.option("--epochs", type=int, help="Maximum epochs (early stopping may end sooner).")
@click.option("--seed", type=int, help="Random seed.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="TOML or JSON file of training settings (see trainer/train.py TrainConfig).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint beside --out (OUT.ckpt) after a crash.")
@click.option("--forget-users", type=click.Path(exists=True, dir_okay=False),
              help="File from `recsys features forgotten`: leave those users out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(interactions, users, items, model, out, epochs, seed, config_file, resume, forget_users, quiet) -> None:
    """Train a model and export it as an artifact directory.

    Next-item models (sasrec, gru4rec, caser) take trainer/train.py TrainConfig settings;
    feature-based rankers (deepfm, dcn, conv_ctr) and the rating model take
    trainer/ranking.py RankConfig settings (labels, negatives, history length, ...).
    """
    from recsys.config import load_config
    from trainer.export import ExportError

    if model in FEATURE_MODELS:
        from trainer.ranking import RankConfig
        from trainer.ranking_export import train_and_export_ranker

        if resume or forget_users:
            raise click.UsageError("--resume and --forget-users apply to next-item models only, for now")
        try:
            cfg = load_config(RankConfig, file=config_file, env_prefix="RECSYS_RANK_",
                              overrides={"model": model, "epochs": epochs, "seed": seed})
            train_and_export_ranker(cfg, interactions, out, users=users, items=items, progress=not quiet)
        except (ValueError, ExportError) as exc:
            raise click.ClickException(str(exc)) from None
        return

    from trainer.pipeline import train_and_export
    from trainer.train import TrainConfig

    try:
        cfg = load_config(
            TrainConfig, file=config_file, env_prefix="RECSYS_TRAIN_",
            overrides={"model": model, "epochs": epochs, "seed": seed},
        )
        train_and_export(interactions, out, cfg, users=users, items=items, progress=not quiet, resume=resume,
                         forget_users=forget_users)
    except (ValueError, ExportError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--artifact", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--test", "test_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Table of user_id,item_id rows to predict.")
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--protocol", default="full", show_default=True, type=click.Choice(["full", "sampled"]),
              help="Rank against every unseen item, or against --negatives sampled ones.")
@click.option("--negatives", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--sampling", default="uniform", show_default=True, type=click.Choice(["uniform", "popularity"]))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
def evaluate(artifact, test_path, k, protocol, negatives, sampling, as_json) -> None:
    """Offline evaluation of an artifact's ONNX model (seen items excluded)."""
    from trainer.evaluate import evaluate_artifact

    try:
        result = evaluate_artifact(artifact, test_path, k=k, protocol=protocol, negatives=negatives, sampling=sampling)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for key, value in result.items():
        click.echo(f"{key:>26}  {value:.4f}" if isinstance(value, float) else f"{key:>26}  {value}")
    if as_json:
        click.echo(json.dumps(result))


@main.command()
@click.option("--interactions", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training table; split leave-last-out when --test is not given.")
@click.option("--test", "test_path", type=click.Path(exists=True, dir_okay=False), help="user_id,item_id rows to predict.")
@click.option("--users", type=click.Path(exists=True, dir_okay=False))
@click.option("--items", type=click.Path(exists=True, dir_okay=False))
@click.option("--models", default="sasrec,gru4rec,caser", show_default=True, help="Comma-separated model names.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for artifacts, compare.json and compare.png.")
@click.option("--epochs", type=int)
@click.option("--seed", type=int)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--quiet", is_flag=True)
def compare(interactions, test_path, users, items, models, out, epochs, seed, config_file, k, quiet) -> None:
    """Train several models on one split, evaluate each, print a table, write a plot."""
    from recsys.config import load_config
    from trainer.compare import compare_models
    from trainer.train import TrainConfig

    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in names if m not in SEQUENTIAL_MODELS]
    if unknown or not names:
        raise click.BadParameter(f"unknown or unsupported model(s) {', '.join(unknown) or '(none given)'}; "
                                 f"compare takes next-item models: {', '.join(SEQUENTIAL_MODELS)}",
                                 param_hint="--models")
    try:
        cfg = load_config(TrainConfig, file=config_file, env_prefix="RECSYS_TRAIN_", overrides={"epochs": epochs, "seed": seed})
        compare_models(interactions, names, out, cfg, test=test_path, users=users, items=items, k=k, progress=not quiet)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def serve() -> None:
    """Run the gRPC services."""


def _server_tls_options(command):
    """--tls-cert/--tls-key/--tls-client-ca/--auth-token-file, shared by both `serve` commands."""
    pem = click.Path(exists=True, dir_okay=False)
    for option in reversed([
        click.option("--tls-cert", type=pem, help="Serve TLS with this certificate chain (PEM); needs --tls-key."),
        click.option("--tls-key", type=pem, help="Private key of --tls-cert (PEM)."),
        click.option("--tls-client-ca", type=pem,
                     help="Mutual TLS: require client certificates signed by this CA (PEM)."),
        click.option("--auth-token-file", type=click.Path(exists=True, dir_okay=False),
                     help="Require `authorization: Bearer TOKEN` with one of these tokens (one per line; "
                          "health stays open). Default: the comma-separated RECSYS_AUTH_TOKENS, if set."),
    ]):
        command = option(command)
    return command


def _server_security(tls_cert, tls_key, tls_client_ca, auth_token_file):
    from recsys.security import ServerSecurity, ServerTls, read_tokens

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        raise click.UsageError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    try:
        tokens = read_tokens(auth_token_file)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    tls = ServerTls(tls_cert, tls_key, tls_client_ca) if tls_cert is not None else None
    return ServerSecurity(tls=tls, tokens=tokens)


def _client_security(ca, cert, key, token_file, token, *, flags: str):
    """ClientSecurity from client flags; TLS is on when a CA or a client certificate is given."""
    from recsys.security import ClientSecurity, ClientTls, read_token

    if (cert is None) != (key is None):
        raise click.UsageError(f"{flags}: a client certificate and its key go together")
    try:
        secret = read_token(token_file, token)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    tls = ClientTls(ca, cert, key) if ca is not None or cert is not None else None
    return ClientSecurity(tls=tls, token=secret)


STORE_HELP = ("Online store URL: sqlite://PATH (embedded, persistent; sqlite:///abs/path for an absolute path), "
              "redis://HOST:PORT/DB (shared) or memory:// (lost on exit); ?max_events=N bounds each history.")


@serve.command("features")
@click.option("--artifact", type=click.Path(exists=True, file_okay=False),
              help="Load this artifact first (idempotent); without it, serve what the store was last loaded with.")
@click.option("--store", default="sqlite://recsys-features.sqlite", show_default=True, help=STORE_HELP)
@click.option("--host", default="[::]", show_default=True)
@click.option("--port", default=DEFAULT_FEATURES_PORT, show_default=True, type=int)
@_server_tls_options
@click.option("-v", "--verbose", is_flag=True)
def serve_features(artifact, store, host, port, tls_cert, tls_key, tls_client_ca, auth_token_file, verbose) -> None:
    """Serve user and item features (and record events) from an online store."""
    _logging(verbose)
    security = _server_security(tls_cert, tls_key, tls_client_ca, auth_token_file)
    from feature_service.server import serve as run
    from feature_service.stores import StoreUnavailable
    from recsys.errors import RecsysError

    try:
        run(artifact, store, host, port, security=security)
    except (ValueError, RecsysError, StoreUnavailable) as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def features() -> None:
    """Manage the online feature store: load artifacts, forget users."""


def _open_store(url: str):
    from feature_service.stores import StoreUnavailable, open_store

    try:
        return open_store(url)
    except (ValueError, StoreUnavailable) as exc:
        raise click.ClickException(str(exc)) from None


@features.command("load")
@click.option("--artifact", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--store", required=True, help=STORE_HELP)
def features_load(artifact, store) -> None:
    """Write an artifact's users, items and histories into a store (idempotent); print what was written."""
    from feature_service.loader import load_artifact
    from feature_service.stores import StoreUnavailable
    from recsys.errors import RecsysError

    with _open_store(store) as opened:
        try:
            report = load_artifact(opened, artifact)
        except (RecsysError, StoreUnavailable) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(report.to_dict()))


@features.command("forget")
@click.option("--store", required=True, help=STORE_HELP)
@click.argument("user_ids", nargs=-1, required=True)
def features_forget(store, user_ids) -> None:
    """Delete everything the store holds about USER_IDS and keep their tombstones."""
    from feature_service.stores import StoreUnavailable

    with _open_store(store) as opened:
        for user_id in user_ids:
            try:
                found = opened.forget_user(user_id)
            except StoreUnavailable as exc:
                raise click.ClickException(str(exc)) from None
            click.echo(json.dumps({"user_id": user_id, "found": found}))


@features.command("forgotten")
@click.option("--store", required=True, help=STORE_HELP)
@click.option("--out", required=True, type=click.Path(dir_okay=False, writable=True),
              help="JSON lines {user_id, forgotten_at} for the trainer to leave out.")
def features_forgotten(store, out) -> None:
    """Write the users the store has forgotten (tombstones), for the next export to leave out."""
    from feature_service.stores import StoreUnavailable

    with _open_store(store) as opened:
        try:
            forgotten = opened.forgotten_users()
        except StoreUnavailable as exc:
            raise click.ClickException(str(exc)) from None
    with open(out, "w", encoding="utf-8") as f:
        for user_id, at in sorted(forgotten.items()):
            f.write(json.dumps({"user_id": user_id, "forgotten_at": at}, ensure_ascii=False) + "\n")
    click.echo(f"{len(forgotten)} forgotten users written to {out}")


@serve.command("inference")
@click.option("--artifact", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--features", "features_target", required=True, help="Feature service HOST:PORT.")
@click.option("--host", default="[::]", show_default=True)
@click.option("--port", default=DEFAULT_INFERENCE_PORT, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="ONNX Runtime intra-op threads.")
@click.option("--max-k", default=1000, show_default=True, type=click.IntRange(min=1), help="Largest k a request may ask for.")
@click.option("--retrieval", "retrieval_dir", type=click.Path(exists=True, file_okay=False),
              help="Two-stage serving: this next-item artifact proposes candidates, --artifact (a ranker) re-scores them.")
@click.option("--candidates", default=200, show_default=True, type=click.IntRange(min=1),
              help="Candidates the retrieval stage proposes per request.")
@_server_tls_options
@click.option("--features-tls-ca", type=click.Path(exists=True, dir_okay=False),
              help="Reach the feature service over TLS, trusting this CA (PEM).")
@click.option("--features-tls-cert", type=click.Path(exists=True, dir_okay=False),
              help="Client certificate (PEM) for a feature service that requires mutual TLS.")
@click.option("--features-tls-key", type=click.Path(exists=True, dir_okay=False), help="Key of --features-tls-cert.")
@click.option("--features-token-file", type=click.Path(exists=True, dir_okay=False),
              help="Bearer token (one line) for the feature service. Default: RECSYS_FEATURES_TOKEN, if set.")
@click.option("-v", "--verbose", is_flag=True)
def serve_inference(artifact, features_target, host, port, device, threads, max_k, retrieval_dir, candidates,
                    tls_cert, tls_key, tls_client_ca, auth_token_file, features_tls_ca, features_tls_cert,
                    features_tls_key, features_token_file, verbose) -> None:
    """Serve Recommend and Score from an artifact's ONNX model."""
    import os

    _logging(verbose)
    security = _server_security(tls_cert, tls_key, tls_client_ca, auth_token_file)
    feature_security = _client_security(features_tls_ca, features_tls_cert, features_tls_key, features_token_file,
                                        os.environ.get("RECSYS_FEATURES_TOKEN"), flags="--features-tls-*")
    from inference_server.server import serve as run
    from recsys.errors import RecsysError

    try:
        run(artifact, features_target, host=host, port=port, device=device, threads=threads, max_k=max_k,
            retrieval_dir=retrieval_dir, num_candidates=candidates, security=security,
            feature_security=feature_security)
    except (ValueError, RecsysError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--server", default=f"localhost:{DEFAULT_INFERENCE_PORT}", show_default=True, help="Inference server HOST:PORT.")
@click.option("--user", "user_id", required=True)
@click.option("--k", default=10, show_default=True, type=int)
@click.option("--include-seen", is_flag=True, help="Keep items the user already has.")
@click.option("--timeout", default=5.0, show_default=True, type=float, help="Seconds.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False),
              help="Use TLS, trusting this CA (PEM) for the server's certificate.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False),
              help="Client certificate (PEM) for a server that requires mutual TLS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Key of --tls-cert.")
@click.option("--token", envvar="RECSYS_TOKEN", show_envvar=True,
              help="Bearer token to send (prefer the environment variable: flags show in `ps`).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), help="File holding the token (one line).")
def recommend(server, user_id, k, include_seen, timeout, tls_ca, tls_cert, tls_key, token, token_file) -> None:
    """Ask the inference server for a user's top-k and print them."""
    security = _client_security(tls_ca, tls_cert, tls_key, token_file, token, flags="--tls-cert/--tls-key")
    from recsys.client import RecommendError, format_recommendations, recommend as call

    try:
        response = call(server, user_id, k, exclude_seen=not include_seen, timeout_s=timeout, security=security)
    except (ValueError, RecommendError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_recommendations(user_id, response))


if __name__ == "__main__":
    sys.exit(main())
