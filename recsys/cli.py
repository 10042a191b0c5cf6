"""The `recsys` command. Only parsing and dispatch: heavy modules load inside each command,
so `recsys --help` stays instant."""

from __future__ import annotations

import json
import os
import sys

import click

DEFAULT_FEATURES_PORT = 50051
DEFAULT_INFERENCE_PORT = 50052
# trainer.models.MODELS (next-item) and trainer.families.ranker.RANKERS (feature-based), spelled out so
# `recsys --help` needs no torch (a test keeps them equal)
SEQUENTIAL_MODELS = ["sasrec", "gru4rec", "caser", "content_sasrec", "ensemble"]
FEATURE_MODELS = ["deepfm", "dcn", "conv_ctr", "rating"]
RETRIEVAL_MODELS = ["two_tower"]  # trainer/families/two_tower.py
MODEL_NAMES = SEQUENTIAL_MODELS + FEATURE_MODELS + RETRIEVAL_MODELS


def _logging(verbose: bool, json_logs: bool = False, log_user_ids: bool = False) -> None:
    from recsys.logs import configure

    configure(verbose=verbose, json_lines=json_logs, log_user_ids=log_user_ids)


def _ops_options(command):
    """--metrics-port/--json-logs/--access-log/--log-user-ids/--max-concurrent-rpcs/--workers, shared by both `serve` commands."""
    for option in reversed([
        click.option("--metrics-port", type=click.IntRange(min=0, max=65535),
                     help="Serve Prometheus metrics over HTTP on this port (text format, any path)."),
        click.option("--json-logs", is_flag=True, help="One JSON object per log line (ts, level, logger, message, request_id)."),
        click.option("--access-log", is_flag=True, help="Log one line per call: method, status code, ms, request id."),
        click.option("--log-user-ids", is_flag=True,
                     help="Write user ids in clear in logs (default: a keyed hash; key from RECSYS_LOG_KEY)."),
        click.option("--max-concurrent-rpcs", type=click.IntRange(min=1),
                     help="Calls in flight (running or queued) beyond which new ones get RESOURCE_EXHAUSTED."),
        click.option("--workers", default=8, show_default=True, type=click.IntRange(min=1, max=1024),
                     help="Threads serving calls at once (more lets concurrent calls share feature fetches and "
                          "model runs; each costs memory and GIL hand-offs)."),
    ]):
        command = option(command)
    return command


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
    from trainer.data.download import download_movielens_100k

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
    from trainer.data.split import write_leave_last_out

    try:
        click.echo(json.dumps(write_leave_last_out(interactions, out_dir), indent=2))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@data.command("synth")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Write interactions.parquet (or .csv) and synth.json here.")
@click.option("--artifact", type=click.Path(file_okay=False),
              help="Also train SASRec briefly on the data (in memory) and export a benchmark artifact here.")
@click.option("--items", default=1_000_000, show_default=True, type=click.IntRange(min=1))
@click.option("--users", default=1_000_000, show_default=True, type=click.IntRange(min=1))
@click.option("--interactions", default=50_000_000, show_default=True, type=click.IntRange(min=1))
@click.option("--zipf", default=0.9, show_default=True, type=float, help="Popularity power-law exponent.")
@click.option("--follow", default=0.6, show_default=True, type=float, help="Probability the next item follows the current one.")
@click.option("--topics", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Latent item topics (categories) users have tastes for; 0 = none.")
@click.option("--taste", default=0.7, show_default=True, type=float,
              help="Probability a fresh event / a successor stays in the user's / item's topics.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--format", "fmt", default="parquet", show_default=True, type=click.Choice(["parquet", "csv"]))
@click.option("--steps", default=1500, show_default=True, type=click.IntRange(min=1),
              help="--artifact: training steps (batches of 128 windows).")
@click.option("--export-users", default=5000, show_default=True, type=click.IntRange(min=1),
              help="--artifact: users whose histories go into the artifact (for the feature service and benchmarks).")
@click.option("--ann", default="auto", show_default=True, type=click.Choice(["auto", "on", "off"]),
              help="--artifact: build an ANN index (auto: from 100k items).")
@click.option("--ann-backend", default="norm-pruned", show_default=True,
              type=click.Choice(["norm-pruned", "faiss-ivf", "faiss-hnsw", "usearch"]))
@click.option("--target-recall", default=0.97, show_default=True, type=click.FloatRange(0, 1),
              help="--artifact: the fastest search setting (norm-pruned cosine cap, faiss-ivf nprobe) whose recall@10 "
                   "on held-apart users reaches this.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0), help="--artifact: torch threads (0 = torch's choice).")
def data_synth(out_dir, artifact, items, users, interactions, zipf, follow, topics, taste, seed, fmt, steps, export_users,
               ann, ann_backend, target_recall, threads) -> None:
    """Synthetic interactions at scale: power-law popularity, topics and tastes, sequential structure, streamed to disk."""
    from trainer.data.synth import SynthConfig, train_synth_artifact, write_synth

    if not out_dir and not artifact:
        raise click.UsageError("give --out (data files), --artifact (a benchmark model), or both")
    cfg = SynthConfig(items=items, users=users, interactions=interactions, zipf=zipf, follow=follow, topics=topics,
                      taste=taste, seed=seed)
    try:
        cfg.check()
        if out_dir:
            click.echo(json.dumps(write_synth(cfg, out_dir, fmt=fmt, log=lambda m: click.echo(m, err=True)), indent=2))
        if artifact:
            manifest = train_synth_artifact(cfg, artifact, steps=steps, export_users=export_users, ann=ann,
                                            ann_backend=ann_backend, target_recall=target_recall, threads=threads,
                                            log=lambda m: click.echo(m, err=True))
            click.echo(f"wrote {artifact} ({manifest.model_version})")
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
              help="TOML or JSON file of training settings (see trainer/families/next_item.py TrainConfig).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint beside --out (OUT.ckpt) after a crash.")
@click.option("--forget-users", type=click.Path(exists=True, dir_okay=False),
              help="File from `recsys features forgotten`: leave those users out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--pseudonymise-key", type=click.Path(exists=True, dir_okay=False),
              help="Replace user ids by HMAC-SHA256 pseudonyms under this key file (kept out of the artifact; "
                   "`recsys pseudonym keygen`).")
@click.option("--popularity-debias", type=click.FloatRange(min=0),
              help="Logit adjustment tau against popularity bias (next-item models; 0 = off; TrainConfig.popularity_debias).")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(min=1),
              help="Data-parallel ranks on this machine (PyTorch DDP via torchrun; gloo on CPU, NCCL on GPU).")
@click.option("--item-vectors", type=click.Path(exists=True, dir_okay=False),
              help="content_sasrec: precomputed item vectors (CSV item_id,v1,..,vk or JSONL {item_id, vector}).")
@click.option("--private", is_flag=True,
              help="Differentially private training (DP-SGD via Opacus, user-level; sasrec only; "
                   "runs exactly --epochs epochs). Needs the `private` extra.")
@click.option("--target-epsilon", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True,
              help="--private: the epsilon the whole run may spend.")
@click.option("--delta", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
              help="--private: delta (default 1 / (10 x users)).")
@click.option("--max-grad-norm", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="--private: per-user gradient clipping bound.")
@click.option("--expected-batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="--private: expected users per step (Poisson sampling).")
def train(interactions, users, items, model, out, epochs, seed, config_file, resume, forget_users, quiet,
          pseudonymise_key, popularity_debias, nproc, item_vectors, private, target_epsilon, delta, max_grad_norm,
          expected_batch) -> None:
    """Train a model and export it as an artifact directory.

    --nproc N runs N DDP ranks through torchrun; so does `torchrun --nproc-per-node N -m recsys.cli
    train ...` (add --nnodes/--rdzv-endpoint for several machines). Only rank 0 writes the artifact.

    Next-item models (sasrec, gru4rec, caser) take trainer/families/next_item.py TrainConfig settings; an
    ensemble of them (--model ensemble) takes those plus its `members` (trainer/families/ensemble.py);
    feature-based rankers (deepfm, dcn, conv_ctr) and the rating model take
    trainer/families/ranker.py RankConfig settings (labels, negatives, history length, ...); the
    two-tower retrieval model takes trainer/families/two_tower.py RetrievalConfig settings.
    """
    from recsys.config import load_config
    from trainer.export.onnx import ExportError

    if model not in SEQUENTIAL_MODELS and (pseudonymise_key or popularity_debias is not None):
        raise click.UsageError("--pseudonymise-key and --popularity-debias apply to next-item models only, for now")
    if private and (model != "sasrec" or resume or nproc > 1):
        raise click.UsageError("--private trains sasrec, without --resume or --nproc")
    if model == "ensemble" and nproc > 1:
        raise click.UsageError("--nproc (DDP) trains one model; train an ensemble's members on one process")
    if item_vectors and model != "content_sasrec":
        raise click.UsageError("--item-vectors applies to content_sasrec only")
    if model in RETRIEVAL_MODELS:
        from trainer.families.two_tower import RetrievalConfig
        from trainer.export.two_tower import train_and_export_two_tower

        if resume or forget_users or nproc > 1:
            raise click.UsageError("--resume, --forget-users and --nproc apply to other models only, for now")
        try:
            cfg = load_config(RetrievalConfig, file=config_file, env_prefix="RECSYS_RETRIEVAL_",
                              overrides={"model": model, "epochs": epochs, "seed": seed})
            train_and_export_two_tower(cfg, interactions, out, users=users, items=items, progress=not quiet)
        except (ValueError, ExportError) as exc:
            raise click.ClickException(str(exc)) from None
        return
    if model in FEATURE_MODELS:
        from trainer.families.ranker import RankConfig
        from trainer.export.ranker import train_and_export_ranker

        if forget_users:
            raise click.UsageError("--forget-users applies to next-item models only, for now")
        if nproc > 1:
            raise click.UsageError("--nproc (DDP) applies to next-item models only, for now")
        try:
            cfg = load_config(RankConfig, file=config_file, env_prefix="RECSYS_RANK_",
                              overrides={"model": model, "epochs": epochs, "seed": seed})
            train_and_export_ranker(cfg, interactions, out, users=users, items=items, progress=not quiet,
                                    resume=resume)
        except (ValueError, ExportError) as exc:
            raise click.ClickException(str(exc)) from None
        return

    from trainer import distributed
    from trainer.pipeline import train_and_export
    from trainer.families.next_item import TrainConfig

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        sys.exit(distributed.launch(nproc, _without_nproc(sys.argv[1:])))
    try:
        cfg = load_config(
            TrainConfig, file=config_file, env_prefix="RECSYS_TRAIN_",
            overrides={"model": model, "epochs": epochs, "seed": seed, "popularity_debias": popularity_debias},
        )
        distributed.init_from_env()
        privacy = None
        if private:
            from trainer.families.private import PrivacyConfig

            privacy = PrivacyConfig(target_epsilon=target_epsilon, delta=delta, max_grad_norm=max_grad_norm,
                                    expected_batch=expected_batch)
        train_and_export(interactions, out, cfg, users=users, items=items, progress=not quiet, resume=resume,
                         forget_users=forget_users, pseudonymise_key=pseudonymise_key, item_vectors=item_vectors,
                         private=privacy)
    except (ValueError, ExportError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        distributed.shutdown()


@main.command("add-items")
@click.option("--artifact", required=True, type=click.Path(exists=True, file_okay=False),
              help="Artifact of a content model (content_sasrec) trained here.")
@click.option("--items", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Item table holding the new items (and any updated rows).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New artifact directory.")
@click.option("--item-vectors", type=click.Path(exists=True, dir_okay=False), help="Vectors, as in training.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="content_model.pt (default: ARTIFACT.ckpt/content_model.pt).")
def add_items(artifact, items, out, item_vectors, checkpoint) -> None:
    """Add items without interactions to a content model by re-export (no retraining)."""
    from recsys.errors import RecsysError
    from trainer.families.content import add_items as add
    from trainer.export.onnx import ExportError

    try:
        manifest = add(artifact, items, out, content_checkpoint=checkpoint, item_vectors=item_vectors)
    except (ValueError, ExportError, RecsysError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out} ({manifest.model_version}): {manifest.training['added_items']['count']} item(s) added")


def _without_nproc(argv: list[str]) -> list[str]:
    """argv less its --nproc N / --nproc=N (the ranks torchrun starts must not launch again)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


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
    from trainer.families.next_item import TrainConfig

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
@_ops_options
@click.option("-v", "--verbose", is_flag=True)
def serve_features(artifact, store, host, port, tls_cert, tls_key, tls_client_ca, auth_token_file, metrics_port,
                   json_logs, access_log, log_user_ids, max_concurrent_rpcs, workers, verbose) -> None:
    """Serve user and item features (and record events) from an online store."""
    _logging(verbose, json_logs, log_user_ids)
    security = _server_security(tls_cert, tls_key, tls_client_ca, auth_token_file)
    from feature_service.server import serve as run
    from feature_service.stores import StoreUnavailable
    from recsys.errors import RecsysError

    options = {"metrics_port": metrics_port, "access_log": access_log, "max_workers": workers}
    if max_concurrent_rpcs is not None:
        options["max_concurrent_rpcs"] = max_concurrent_rpcs
    try:
        run(artifact, store, host, port, security=security, **options)
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
@click.option("--pseudonymise-key", type=click.Path(exists=True, dir_okay=False),
              help="USER_IDS are raw ids of a store loaded with pseudonyms under this key.")
@click.argument("user_ids", nargs=-1, required=True)
def features_forget(store, pseudonymise_key, user_ids) -> None:
    """Delete everything the store holds about USER_IDS and keep their tombstones."""
    from feature_service.stores import StoreUnavailable

    with _open_store(store) as opened:
        for user_id in user_ids:
            stored = _pseudonym(pseudonymise_key, user_id)
            try:
                found = opened.forget_user(stored)
            except StoreUnavailable as exc:
                raise click.ClickException(str(exc)) from None
            shown = {"user_id": user_id, "pseudonym": stored} if pseudonymise_key else {"user_id": user_id}
            click.echo(json.dumps({**shown, "found": found}))


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
@click.option("--artifact", type=click.Path(exists=True, file_okay=False), help="Serve this artifact directory.")
@click.option("--repo", type=click.Path(exists=True, file_okay=False),
              help="Or serve --model from this model repository (REPO/MODEL/VERSION/), swapping in new versions.")
@click.option("--model", "model_name", help="Model name in --repo.")
@click.option("--version", "model_version", type=click.IntRange(min=1),
              help="Pin this version of --model (default: the newest version that passes its checks).")
@click.option("--watch-interval", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds between looks at --repo for new versions (0: only through the admin RPC).")
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
@click.option("--max-candidates", default=10000, show_default=True, type=click.IntRange(min=1),
              help="Most item_ids one Score request may carry.")
@click.option("--max-message-mb", default=16, show_default=True, type=click.IntRange(min=1),
              help="Largest request or response, in MiB.")
@click.option("--request-timeout", default=1.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds a call may wait for the feature service, even when the caller set no deadline.")
@click.option("--feature-timeout", default=1.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds any one call to the feature service may take.")
@click.option("--no-degrade", is_flag=True,
              help="Fail with UNAVAILABLE when the feature service is down or slow, instead of answering "
                   "from the request's history or popularity (marked degraded).")
@_server_tls_options
@_ops_options
@click.option("--features-tls-ca", type=click.Path(exists=True, dir_okay=False),
              help="Reach the feature service over TLS, trusting this CA (PEM).")
@click.option("--features-tls-cert", type=click.Path(exists=True, dir_okay=False),
              help="Client certificate (PEM) for a feature service that requires mutual TLS.")
@click.option("--features-tls-key", type=click.Path(exists=True, dir_okay=False), help="Key of --features-tls-cert.")
@click.option("--features-token-file", type=click.Path(exists=True, dir_okay=False),
              help="Bearer token (one line) for the feature service. Default: RECSYS_FEATURES_TOKEN, if set.")
@click.option("--batch-max", default=0, show_default=True, type=click.IntRange(min=0),
              help="Micro-batching: gather up to this many concurrent requests into one ONNX Runtime run (0 = off).")
@click.option("--batch-wait-us", default=0, show_default=True, type=click.IntRange(min=0),
              help="Micro-batching: longest wait for more requests after the first (0 = batch only those queued).")
@click.option("--ann", default="auto", show_default=True, type=click.Choice(["auto", "on", "off"]),
              help="Recommend through the artifact's ANN index: auto = when it has one, off = exact scoring.")
@click.option("--graph-opt", default="all", show_default=True, type=click.Choice(["disabled", "basic", "extended", "all"]),
              help="ONNX Runtime graph optimisation level.")
@click.option("--spin", is_flag=True, help="Let ONNX Runtime threads busy-wait (only with idle cores to spare).")
@click.option("--variant", default="fp32", show_default=True, type=click.Choice(["fp32", "int8"]),
              help="Model variant: int8 runs model.int8.onnx (exported with int8 = true).")
@click.option("-v", "--verbose", is_flag=True)
def serve_inference(artifact, repo, model_name, model_version, watch_interval, features_target, host, port, device,
                    threads, max_k, retrieval_dir, candidates, max_candidates, max_message_mb, request_timeout,
                    feature_timeout, no_degrade, tls_cert, tls_key, tls_client_ca, auth_token_file, metrics_port,
                    json_logs, access_log, log_user_ids, max_concurrent_rpcs, workers, features_tls_ca, features_tls_cert,
                    features_tls_key, features_token_file, batch_max, batch_wait_us, ann, graph_opt, spin,
                    variant, verbose) -> None:
    """Serve Recommend and Score from an artifact's ONNX model, or from a model repository."""
    import os

    # numpy's BLAS (the ANN scan's matrix-vector products) gets the same thread budget as ONNX
    # Runtime: requests run concurrently, so a BLAS pool per call only adds hand-offs and tail
    # latency (1M-item case, one client: p99 10.9 ms with the default pool, 6.3 ms with one
    # thread, 2026-11-28). Set before numpy loads; an explicit environment setting wins.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    if (artifact is None) == (repo is None):
        raise click.UsageError("give --artifact DIR, or --repo PATH with --model NAME")
    if (repo is None) != (model_name is None) or (model_version is not None and repo is None):
        raise click.UsageError("--repo and --model go together (and --version needs them)")
    _logging(verbose, json_logs, log_user_ids)
    security = _server_security(tls_cert, tls_key, tls_client_ca, auth_token_file)
    feature_security = _client_security(features_tls_ca, features_tls_cert, features_tls_key, features_token_file,
                                        os.environ.get("RECSYS_FEATURES_TOKEN"), flags="--features-tls-*")
    from inference_server.server import serve as run
    from inference_server.speed import SpeedOptions
    from recsys.errors import RecsysError
    from recsys.onnx_session import SessionTuning

    try:
        run(artifact, features_target, host=host, port=port, device=device, threads=threads, max_k=max_k,
            retrieval_dir=retrieval_dir, num_candidates=candidates, security=security,
            feature_security=feature_security, repo=repo, model=model_name, version=model_version,
            watch_interval_s=watch_interval, max_candidates=max_candidates,
            max_message_bytes=max_message_mb * 1024 * 1024, request_timeout_s=request_timeout,
            feature_timeout_s=feature_timeout, degrade=not no_degrade, metrics_port=metrics_port,
            access_log=access_log, max_workers=workers,
            **({"max_concurrent_rpcs": max_concurrent_rpcs} if max_concurrent_rpcs else {}),
            speed=SpeedOptions(batch_max=batch_max, batch_wait_us=batch_wait_us, ann=ann, variant=variant,
                               tuning=SessionTuning(graph_opt=graph_opt, intra_threads=threads, spinning=spin)))
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
@click.option("--pseudonymise-key", type=click.Path(exists=True, dir_okay=False),
              help="The model was trained with this pseudonymisation key: send the user's pseudonym.")
def recommend(server, user_id, k, include_seen, timeout, tls_ca, tls_cert, tls_key, token, token_file,
              pseudonymise_key) -> None:
    """Ask the inference server for a user's top-k and print them."""
    security = _client_security(tls_ca, tls_cert, tls_key, token_file, token, flags="--tls-cert/--tls-key")
    from recsys.client import RecommendError, format_recommendations, recommend as call

    try:
        response = call(server, _pseudonym(pseudonymise_key, user_id), k, exclude_seen=not include_seen,
                        timeout_s=timeout, security=security)
    except (ValueError, RecommendError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_recommendations(user_id, response))



@main.command()
@click.option("--server", default=f"localhost:{DEFAULT_INFERENCE_PORT}", show_default=True, help="Inference server HOST:PORT.")
@click.option("--artifact", required=True, type=click.Path(exists=True, file_okay=False),
              help="The artifact the server serves: users to draw, and the model for the compute floor.")
@click.option("--rpc", default="recommend", show_default=True, type=click.Choice(["recommend", "score"]))
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1), help="Recommend k.")
@click.option("--candidates", default=1000, show_default=True, type=click.IntRange(min=1), help="Score: item ids per request.")
@click.option("--levels", default="1,8,32", show_default=True, help="Comma-separated concurrent client counts.")
@click.option("--duration", default=5.0, show_default=True, type=float, help="Measured seconds per level.")
@click.option("--requests", default=0, show_default=True, type=click.IntRange(min=0),
              help="Measured calls per level instead of --duration (0 = use --duration).")
@click.option("--warmup", default=1.0, show_default=True, type=float, help="Unmeasured seconds before each level.")
@click.option("--users", default=1000, show_default=True, type=click.IntRange(min=1), help="Users drawn from the artifact.")
@click.option("--no-echo", is_flag=True, help="Skip the echo floor.")
@click.option("--no-compute", is_flag=True, help="Skip the in-process compute floor.")
@click.option("--server-pid", default=0, type=int,
              help="Report this process's RSS and CPU per call (the server's, on this machine).")
@click.option("--features-pid", default=0, type=int, help="Report this process's CPU per call (the feature service's).")
@click.option("--label", default="", help="Name of this run in the report and plot.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Write NAME.json and NAME.png here.")
@click.option("--name", default="bench", show_default=True, help="File name stem under --out.")
def bench(server, artifact, rpc, k, candidates, levels, duration, requests, warmup, users, no_echo, no_compute,
          server_pid, features_pid, label, out_dir, name) -> None:
    """Load a running inference server; report latency/throughput per level against its floor."""
    from inference_server.bench import BenchConfig, format_report, run_bench, write_report

    try:
        level_list = tuple(int(x) for x in levels.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter("comma-separated integers, e.g. 1,8,32", param_hint="--levels") from None
    cfg = BenchConfig(server=server, artifact=artifact, rpc=rpc, k=k, candidates=candidates, levels=level_list,
                      duration_s=duration, requests=requests, warmup_s=warmup, users=users, echo=not no_echo,
                      compute=not no_compute, server_pid=server_pid, features_pid=features_pid, label=label)
    try:
        report = run_bench(cfg, log=lambda m: click.echo(m, err=True))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_report(report))
    if out_dir:
        json_path, png = write_report([report], out_dir, name)
        click.echo(f"wrote {json_path}" + (f" and {png}" if png else " (no plot: matplotlib is not installed)"))

@main.command()
@click.option("--artifact", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--repo", required=True, type=click.Path(file_okay=False), help="Model repository (created if missing).")
@click.option("--model", "model_name", help="Model name in the repository. Default: the artifact's model kind.")
def publish(artifact, repo, model_name) -> None:
    """Add an artifact to a model repository as the model's next version (atomically); print it.

    A server started with `serve inference --repo REPO --model NAME` checks the new version
    and swaps to it without dropping a request (or keeps the old one if a check fails).
    """
    from inference_server.model_repository import ModelRepository
    from recsys.errors import RecsysError

    from recsys.artifact import read_manifest

    try:
        name = model_name or read_manifest(artifact).model_kind
        repository = ModelRepository(repo)
        version = repository.publish(artifact, name)
    except (OSError, RecsysError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"model": name, "version": version, "path": str(repository.path(name, version))}))


@main.group()
def model() -> None:
    """Operate a running inference server's model repository: status, load a version, roll back."""


def _admin_call(server: str, method: str, request, token: str | None, tls_ca: str | None, timeout: float):
    import grpc

    from recsys.security import ClientSecurity, ClientTls, open_channel
    from recsys.v1 import admin_pb2_grpc

    security = ClientSecurity(tls=ClientTls(tls_ca, None, None) if tls_ca else None, token=token)
    with open_channel(server, security) as channel:
        try:
            return getattr(admin_pb2_grpc.AdminServiceStub(channel), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise click.ClickException(f"{server}: {exc.code().name}: {exc.details()}") from None


def _admin_options(command):
    for option in reversed([
        click.option("--server", default=f"localhost:{DEFAULT_INFERENCE_PORT}", show_default=True,
                     help="Inference server HOST:PORT."),
        click.option("--token", envvar="RECSYS_TOKEN", show_envvar=True, help="Bearer token to send."),
        click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="Use TLS, trusting this CA (PEM)."),
        click.option("--timeout", default=60.0, show_default=True, type=float,
                     help="Seconds (loading and checking a version takes a while)."),
    ]):
        command = option(command)
    return command


def _print_message(message) -> None:
    from google.protobuf.json_format import MessageToDict

    click.echo(json.dumps(MessageToDict(message, always_print_fields_with_no_presence=True)))


@model.command("status")
@_admin_options
def model_status(server, token, tls_ca, timeout) -> None:
    """The version serving now, the policy and the repository's versions (rejected ones with why)."""
    from recsys.v1 import admin_pb2

    _print_message(_admin_call(server, "GetModelStatus", admin_pb2.GetModelStatusRequest(), token, tls_ca, timeout))


@model.command("load")
@click.argument("version", type=click.IntRange(min=0))
@_admin_options
def model_load(version, server, token, tls_ca, timeout) -> None:
    """Check VERSION beside the served one, swap to it and pin it (0: follow the newest again)."""
    from recsys.v1 import admin_pb2

    _print_message(_admin_call(server, "LoadModelVersion", admin_pb2.LoadModelVersionRequest(version=version),
                               token, tls_ca, timeout))


@model.command("rollback")
@click.option("--version", "version", default=0, type=click.IntRange(min=0),
              help="Roll back to this version (default: the one served before the current one).")
@_admin_options
def model_rollback(version, server, token, tls_ca, timeout) -> None:
    """Serve (and pin) the previously served version again."""
    from recsys.v1 import admin_pb2

    _print_message(_admin_call(server, "RollbackModel", admin_pb2.RollbackModelRequest(version=version),
                               token, tls_ca, timeout))


def _pseudonym(key_file: str | None, user_id: str) -> str:
    """`user_id` as the model knows it: its pseudonym under `key_file`, or itself without one."""
    if key_file is None:
        return user_id
    from recsys.pseudonym import Pseudonymiser

    try:
        return Pseudonymiser.from_file(key_file)(user_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--server", default=f"localhost:{DEFAULT_INFERENCE_PORT}", show_default=True, help="Inference server HOST:PORT.")
@click.option("--user", "user_id", required=True)
@click.option("--k", default=5, show_default=True, type=int)
@click.option("--include-seen", is_flag=True, help="Keep items the user already has.")
@click.option("--timeout", default=5.0, show_default=True, type=float, help="Seconds.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="Use TLS, trusting this CA (PEM).")
@click.option("--token", envvar="RECSYS_TOKEN", show_envvar=True, help="Bearer token to send.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), help="File holding the token (one line).")
@click.option("--pseudonymise-key", type=click.Path(exists=True, dir_okay=False),
              help="The model was trained with this pseudonymisation key: send the user's pseudonym.")
def explain(server, user_id, k, include_seen, timeout, tls_ca, token, token_file, pseudonymise_key) -> None:
    """A user's top-k, each with "because you watched X, Y" (Recommend with explain=true)."""
    security = _client_security(tls_ca, None, None, token_file, token, flags="--tls-ca")
    from recsys.client import RecommendError, format_explanations
    from recsys.client import recommend as call

    try:
        response = call(server, _pseudonym(pseudonymise_key, user_id), k, exclude_seen=not include_seen,
                        timeout_s=timeout, security=security, explain=True)
    except (ValueError, RecommendError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_explanations(user_id, response))


@main.group()
def pseudonym() -> None:
    """Keyed pseudonyms of user ids (HMAC-SHA256): make a key, map ids."""


@pseudonym.command("keygen")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="New key file (mode 600; never overwritten).")
def pseudonym_keygen(out) -> None:
    """Write a new random 32-byte key. Keep it outside artifacts and data directories."""
    from recsys.pseudonym import Pseudonymiser, write_key

    try:
        write_key(out)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; not overwriting a key") from None
    click.echo(json.dumps({"key_file": out, "key_id": Pseudonymiser.from_file(out).key_id}))


@pseudonym.command("map")
@click.option("--key", "key_file", required=True, type=click.Path(exists=True, dir_okay=False))
@click.argument("user_ids", nargs=-1, required=True)
def pseudonym_map(key_file, user_ids) -> None:
    """Print one JSON line {user_id, pseudonym} per USER_ID."""
    for user_id in user_ids:
        click.echo(json.dumps({"user_id": user_id, "pseudonym": _pseudonym(key_file, user_id)}))


@main.command()
@click.option("--server", required=True, help="HOST:PORT of a recsys server (plaintext gRPC).")
@click.option("--service", default="", help="Service to ask about, e.g. recsys.v1.InferenceService; empty: the server.")
@click.option("--timeout", default=3.0, show_default=True, type=float, help="Seconds.")
def health(server, service, timeout) -> None:
    """Exit 0 if the server's gRPC health service answers SERVING, else 1 (container health checks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(server) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout).status
    except grpc.RpcError as exc:
        click.echo(f"{server}: {exc.code().name}", err=True)
        sys.exit(1)
    click.echo(f"{server}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    sys.exit(0 if status == health_pb2.HealthCheckResponse.SERVING else 1)


if __name__ == "__main__":
    sys.exit(main())
