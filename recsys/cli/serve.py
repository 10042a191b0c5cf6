"""`recsys serve features | inference` and `recsys health`: run the gRPC services, probe them."""

from __future__ import annotations

import contextlib
import os
import sys

import click

from recsys.cli._options import (
    DEFAULT_FEATURES_PORT,
    DEFAULT_INFERENCE_PORT,
    FILE,
    STORE_HELP,
    client_security,
    server_options,
)
from recsys.cli.features import load_mode_option


@click.group()
def serve() -> None:
    """Run the gRPC services."""


@serve.command("features")
@click.option(
    "--artifact",
    type=click.Path(exists=True, file_okay=False),
    help="Load this artifact first (idempotent); without it, serve the store as it is.",
)
@click.option(
    "--store",
    help=f"{STORE_HELP} Default with --artifact: features.sqlite in the artifact's parent folder.",
)
@load_mode_option
@server_options(DEFAULT_FEATURES_PORT)
def serve_features(artifact, store, load_mode, server) -> None:
    """Serve user and item features (and record events) from an online store."""
    from feature_service.config import FeatureServiceConfig
    from feature_service.server import serve as run

    if artifact is None and store is None:
        raise click.UsageError("give --store URL (or --artifact DIR, whose default store is beside it)")
    with _port_errors():
        run(FeatureServiceConfig(artifact_dir=artifact, store_url=store, load_mode=load_mode, **server))


@serve.command("inference")
@click.option("--artifact", type=click.Path(exists=True, file_okay=False), help="Serve this artifact directory.")
@click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False),
    help="Or serve --model from this model repository (REPO/MODEL/VERSION/), swapping in new versions.",
)
@click.option("--model", "model_name", help="Model name in --repo.")
@click.option(
    "--version",
    "model_version",
    type=click.IntRange(min=1),
    help="Pin this version of --model (default: the newest version that passes its checks).",
)
@click.option(
    "--watch-interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between looks at --repo for new versions (0: only through the admin RPC).",
)
@click.option(
    "--rollout",
    "rollout_spec",
    default="none",
    show_default=True,
    metavar="none|canary[:FRACTION[:SECONDS]]|shadow[:SECONDS]",
    help="How the watcher brings in a new version of --model: none = swap at once; canary:0.05:60 = "
    "5% of users first, promoted after 60 s within its limits (no SECONDS: `recsys model promote`).",
)
@click.option("--features", "features_target", help="Feature service HOST:PORT (or give --feature-store).")
@click.option(
    "--feature-store",
    metavar="URL",
    help="Read features from the store a feature service writes (sqlite://PATH on this machine, "
    "redis://HOST:PORT/DB), in this process: no second gRPC call per request. Events are still "
    "recorded through the feature service.",
)
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option(
    "--threads", default=1, show_default=True, type=click.IntRange(min=1), help="ONNX Runtime intra-op threads."
)
@click.option(
    "--max-k", default=1000, show_default=True, type=click.IntRange(min=1), help="Largest k a request may ask for."
)
@click.option(
    "--retrieval",
    "retrieval_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Two-stage serving: this next-item artifact proposes candidates, --artifact (a ranker) re-scores them.",
)
@click.option(
    "--candidates",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Candidates the retrieval stage proposes per request.",
)
@click.option(
    "--max-candidates",
    default=10000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most item_ids one Score request may carry.",
)
@click.option(
    "--max-message-mb",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest request or response, in MiB.",
)
@click.option(
    "--request-timeout",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Seconds a call may wait for the feature service, even when the caller set no deadline.",
)
@click.option(
    "--feature-timeout",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Seconds any one call to the feature service may take.",
)
@click.option(
    "--feature-channels",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Connections to the feature service, used in turn (each reaches one of its --processes workers).",
)
@click.option(
    "--no-degrade",
    is_flag=True,
    help="Fail with UNAVAILABLE when the feature service is down or slow, instead of answering "
    "from the request's history or popularity (marked degraded).",
)
@click.option("--features-tls-ca", type=FILE, help="Reach the feature service over TLS, trusting this CA (PEM).")
@click.option(
    "--features-tls-cert", type=FILE, help="Client certificate (PEM) for a feature service that requires mutual TLS."
)
@click.option("--features-tls-key", type=FILE, help="Key of --features-tls-cert.")
@click.option(
    "--features-token-file",
    type=FILE,
    help="Bearer token (one line) for the feature service. Default: RECSYS_FEATURES_TOKEN, if set.",
)
@click.option(
    "--batch-max",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Micro-batching: gather up to this many concurrent requests into one ONNX Runtime run (0 = off).",
)
@click.option(
    "--batch-wait-us",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Micro-batching: longest wait for more requests after the first (0 = batch only those queued).",
)
@click.option(
    "--ann",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "on", "off"]),
    help="Recommend through the artifact's ANN index: auto = when it has one, off = exact scoring.",
)
@click.option(
    "--graph-opt",
    default="all",
    show_default=True,
    type=click.Choice(["disabled", "basic", "extended", "all"]),
    help="ONNX Runtime graph optimisation level.",
)
@click.option("--spin", is_flag=True, help="Let ONNX Runtime threads busy-wait (only with idle cores to spare).")
@click.option(
    "--variant",
    default="fp32",
    show_default=True,
    type=click.Choice(["fp32", "int8"]),
    help="Model variant: int8 runs model.int8.onnx (exported with int8 = true).",
)
@server_options(DEFAULT_INFERENCE_PORT)
def serve_inference(
    artifact,
    repo,
    model_name,
    model_version,
    watch_interval,
    rollout_spec,
    features_target,
    feature_store,
    device,
    threads,
    max_k,
    retrieval_dir,
    candidates,
    max_candidates,
    max_message_mb,
    request_timeout,
    feature_timeout,
    feature_channels,
    no_degrade,
    features_tls_ca,
    features_tls_cert,
    features_tls_key,
    features_token_file,
    batch_max,
    batch_wait_us,
    ann,
    graph_opt,
    spin,
    variant,
    server,
) -> None:
    """Serve Recommend and Score from an artifact's ONNX model, or from a model repository."""
    # numpy's BLAS (the ANN scan) gets ONNX Runtime's thread budget: requests run concurrently, so
    # a BLAS pool per call only adds hand-offs and tail latency. Set before numpy loads; an
    # explicit environment setting wins.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    if (artifact is None) == (repo is None):
        raise click.UsageError("give --artifact DIR, or --repo PATH with --model NAME")
    if (features_target is None) == (feature_store is None):
        raise click.UsageError("give --features HOST:PORT (a feature service) or --feature-store URL (its store)")
    if feature_store is not None and (features_tls_ca or features_tls_cert or features_tls_key or features_token_file):
        raise click.UsageError("--features-tls-* and --features-token-file are for --features; --feature-store "
                               "reads the store directly (its credentials go in the store URL)")  # fmt: skip
    if feature_store is not None and feature_store.startswith("memory:"):
        raise click.UsageError(
            "--feature-store memory:// would be an empty store of this process only; give the sqlite:// or "
            "redis:// store the feature service writes"
        )
    if (repo is None) != (model_name is None) or (model_version is not None and repo is None):
        raise click.UsageError("--repo and --model go together (and --version needs them)")
    feature_security = client_security(
        features_tls_ca,
        features_tls_cert,
        features_tls_key,
        features_token_file,
        os.environ.get("RECSYS_FEATURES_TOKEN"),
        flags="--features-tls-*",
    )
    from inference_server.config import AutoRollout, InferenceConfig
    from inference_server.server import serve as run
    from inference_server.speed import SpeedOptions
    from recsys.onnx_session import SessionTuning

    try:
        auto_rollout = AutoRollout.parse(rollout_spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--rollout") from None
    if auto_rollout is not None and repo is None:
        raise click.UsageError("--rollout needs --repo and --model")
    speed = SpeedOptions(
        batch_max=batch_max,
        batch_wait_us=batch_wait_us,
        ann=ann,
        variant=variant,
        tuning=SessionTuning(graph_opt=graph_opt, intra_threads=threads, spinning=spin),
    )
    with _port_errors():
        run(
            InferenceConfig(
                artifact_dir=artifact,
                repo=repo,
                model=model_name,
                version=model_version,
                watch_interval_s=watch_interval,
                rollout=auto_rollout,
                retrieval_dir=retrieval_dir,
                num_candidates=candidates,
                features_target=features_target or InferenceConfig.features_target,
                feature_store=feature_store,
                open_feature_store=open_feature_core if feature_store is not None else None,
                feature_timeout_s=feature_timeout,
                feature_channels=feature_channels,
                feature_security=feature_security,
                degrade=not no_degrade,
                max_message_bytes=max_message_mb * 1024 * 1024,
                request_timeout_s=request_timeout,
                max_k=max_k,
                max_candidates=max_candidates,
                device=device,
                threads=threads,
                speed=speed,
                **server,
            )
        )


def open_feature_core(url: str):
    """The feature service's core over the store at `url`, for an inference server that reads
    it in process (`--feature-store`). Module level: worker processes import it by name. A store
    no artifact has been loaded into yet (a feature service starting beside this server) is
    served as empty, with a warning; its contract is read again on every health round."""
    import logging
    from pathlib import Path

    from feature_service.loader import stored_contract
    from feature_service.service import FeatureServiceCore
    from feature_service.stores import open_store
    from recsys.errors import FailedPrecondition
    from recsys.schema import FeatureContract

    scheme, _, rest = url.partition("://")
    path = rest.split("?", 1)[0]
    if scheme == "sqlite" and path and not Path(path).is_file():  # a reader creates no store
        raise FailedPrecondition(
            f"no feature store at {path}: give the file a feature service writes "
            "(recsys serve features --store URL, or recsys features load --artifact DIR --store URL)"
        )
    store = open_store(url)
    try:
        contract = stored_contract(store, required=False)
        if contract is None:
            logging.getLogger(__name__).warning(
                "the feature store holds no artifact yet: users are unknown until one is loaded into it "
                "(recsys features load --artifact DIR --store URL, or a feature service started with --artifact)"
            )
            contract = FeatureContract()
        return FeatureServiceCore(store, contract)
    except BaseException:
        store.close()
        raise


@contextlib.contextmanager
def _port_errors():
    """A port that cannot be bound (busy, not permitted) or a worker process that failed to
    start is one error line, not a traceback."""
    from recsys.processes import StartupFailed

    try:
        yield
    except (OSError, StartupFailed) as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.option("--server", required=True, help="HOST:PORT of a recsys server (plaintext gRPC).")
@click.option("--service", default="", help="Service to ask about, e.g. recsys.v1.InferenceService; empty: the server.")
@click.option("--timeout", default=3.0, show_default=True, type=float, help="Seconds.")
def health(server, service, timeout) -> None:
    """Exit 0 if the server's gRPC health service answers SERVING, else 1 (container health checks)."""
    from recsys.client import RecsysClient
    from recsys.errors import RecsysError

    # No retries: a probe reports what it sees now, within its timeout.
    with RecsysClient(server, timeout_s=timeout, retries=0) as client:
        try:
            status = client.health(service)
        except RecsysError as exc:
            click.echo(f"{server}: {exc.code.name}", err=True)
            sys.exit(1)
    click.echo(f"{server}: {status}")
    sys.exit(0 if status == "SERVING" else 1)
