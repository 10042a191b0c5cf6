"""`recsys train | add-items | compare | evaluate`: models in, artifacts out, metrics back.

Model families come from the registry (trainer/registry.py: `resolve(name) -> FamilySpec`), which
says for each model its config class, its environment prefix, what it supports and how it
trains; this module holds no list of models.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import click

from recsys.cli._options import FILE, columns_option

# Flags that need a capability of the model's family: flag -> name in FamilySpec.supports.
CAPABILITY_FLAGS = {
    "--resume": "resume",
    "--nproc": "nproc",
    "--forget-users": "forget_users",
    "--pseudonymise-key": "pseudonymise",
    "--popularity-debias": "popularity_debias",
    "--private": "private",
    "--item-vectors": "item_vectors",
}
MODEL_HELP = (
    "A built-in model ({names}) or your own class as path/to/file.py:ClassName or package.module:ClassName; "
    "default: the --config file's `model`, else sasrec."
)


class _ModelOption(click.Option):
    """--model, whose help lists the registry's built-in names, loaded only when help is shown."""

    def get_help_record(self, ctx: click.Context):
        from trainer.registry import BUILTIN_NAMES

        self.help = MODEL_HELP.format(names=", ".join(BUILTIN_NAMES))
        return super().get_help_record(ctx)


def _resolve(model: str, param_hint: str = "--model"):
    from trainer.registry import resolve

    try:
        return resolve(model)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from None


def _refuse_unsupported(spec, used: dict[str, bool]) -> None:
    """UsageError for the first flag in use that `spec`'s family does not support."""
    from trainer.registry import BUILTIN_NAMES, resolve

    for flag, in_use in used.items():
        capability = CAPABILITY_FLAGS[flag]
        if in_use and capability not in spec.supports:
            others = [name for name in BUILTIN_NAMES if capability in resolve(name).supports]
            where = f"; it applies to {', '.join(others)}" if others else ""
            raise click.UsageError(f"{flag} is not supported by {spec.task} model {spec.name!r}{where}")


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


@click.command()
@click.option(
    "--interactions",
    required=True,
    type=click.Path(exists=True),
    help="user_id,item_id,timestamp[,rating] table (CSV, TSV, Parquet, RecBole .inter, GroupLens u.data), "
    "or a directory of Parquet files.",
)
@click.option("--users", type=FILE, help="User feature table keyed by user_id.")
@click.option("--items", type=FILE, help="Item feature table keyed by item_id.")
@click.option(
    "--model",
    cls=_ModelOption,
    help=MODEL_HELP,
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Artifact directory (replaced atomically)."
)
@click.option("--epochs", type=int, help="Maximum epochs (early stopping may end sooner).")
@click.option("--seed", type=int, help="Random seed.")
@click.option(
    "--tensorboard",
    type=click.Path(file_okay=False),
    help="Write TensorBoard event files here (loss and validation metrics per epoch).",
)
@click.option(
    "--config",
    "config_file",
    type=FILE,
    help="TOML or JSON file of training settings: fields of the model family's config (see below).",
)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint beside --out (OUT.ckpt) after a crash.")
@click.option("--forget-users", type=FILE, help="File from `recsys features forgotten`: leave those users out.")
@click.option("--quiet", is_flag=True, help="No progress bar and no report: one line naming what was written.")
@click.option(
    "--pseudonymise-key",
    type=FILE,
    help="Replace user ids by HMAC-SHA256 pseudonyms under this key file (kept out of the artifact; "
    "`recsys pseudonym keygen`).",
)
@click.option(
    "--popularity-debias",
    type=click.FloatRange(min=0),
    help="Logit adjustment tau against popularity bias (next-item models; 0 = off; TrainConfig.popularity_debias).",
)
@click.option(
    "--nproc",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Data-parallel ranks on this machine (PyTorch DDP via torchrun; gloo on CPU, NCCL on GPU).",
)
@click.option(
    "--item-vectors",
    type=FILE,
    help="content_sasrec: precomputed item vectors (CSV item_id,v1,..,vk or JSONL {item_id, vector}).",
)
@click.option(
    "--private",
    is_flag=True,
    help="Differentially private training (DP-SGD via Opacus, user-level; sasrec only; "
    "runs exactly --epochs epochs on one process). Needs the `private` extra.",
)
@click.option(
    "--target-epsilon",
    type=click.FloatRange(min=0, min_open=True),
    default=8.0,
    show_default=True,
    help="--private: the epsilon the whole run may spend.",
)
@click.option(
    "--delta",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    help="--private: delta (default 1 / (10 x users)).",
)
@click.option(
    "--max-grad-norm",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="--private: per-user gradient clipping bound.",
)
@click.option(
    "--expected-batch",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="--private: expected users per step (Poisson sampling).",
)
@columns_option
def train(
    interactions,
    users,
    items,
    model,
    out,
    epochs,
    seed,
    tensorboard,
    config_file,
    resume,
    forget_users,
    quiet,
    pseudonymise_key,
    popularity_debias,
    nproc,
    item_vectors,
    private,
    target_epsilon,
    delta,
    max_grad_norm,
    expected_batch,
    columns,
) -> None:
    """Train a model and export it as an artifact directory.

    The model's family decides which settings --config and the environment take: next-item
    models TrainConfig (trainer/families/next_item.py, RECSYS_TRAIN_*; an ensemble adds its
    `members`), feature-based rankers and the rating model RankConfig (trainer/families/ranker.py,
    RECSYS_RANK_*), two_tower RetrievalConfig (trainer/families/two_tower.py, RECSYS_RETRIEVAL_*).
    A flag the model's family cannot use is an error that says which models it applies to.

    --nproc N runs N DDP ranks through torchrun; so does `torchrun --nproc-per-node N -m recsys.cli
    train ...` (add --nnodes/--rdzv-endpoint for several machines). Only rank 0 writes the artifact.
    """
    from recsys.config import load_config, read_config_file

    if model is None:  # the config file may name it; --model, when given, wins
        model = str(read_config_file(config_file).get("model", "sasrec")) if config_file else "sasrec"
    spec = _resolve(model)
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    _refuse_unsupported(
        spec,
        {
            "--resume": resume,
            "--nproc": nproc > 1 or under_torchrun,
            "--forget-users": forget_users is not None,
            "--pseudonymise-key": pseudonymise_key is not None,
            "--popularity-debias": popularity_debias is not None,
            "--private": private,
            "--item-vectors": item_vectors is not None,
        },
    )
    if private and (resume or nproc > 1 or under_torchrun):
        raise click.UsageError(
            "--private runs exactly --epochs epochs on one process: its privacy accounting "
            "covers one uninterrupted run, so no --resume or --nproc"
        )
    overrides = {
        "model": model,
        "epochs": epochs,
        "seed": seed,
        "popularity_debias": popularity_debias,
        "tensorboard": tensorboard,
    }
    cfg = load_config(spec.config_cls, file=config_file, env_prefix=spec.env_prefix, overrides=overrides)
    if nproc > 1 and not under_torchrun:
        from trainer.distributed import launch

        sys.exit(launch(nproc, _without_nproc(sys.argv[1:])))
    privacy = None
    if private:
        from trainer.families.private import PrivacyConfig

        privacy = PrivacyConfig(
            target_epsilon=target_epsilon, delta=delta, max_grad_norm=max_grad_norm, expected_batch=expected_batch
        )
    distributed = None
    if "WORLD_SIZE" in os.environ:  # a rank started by torchrun: join the process group
        from trainer import distributed

        distributed.init_from_env()
    # --quiet: no progress bar and no report on stdout, only the line naming what was written
    chatter = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    try:
        with chatter:
            spec.train_and_export(
                cfg,
                interactions,
                out,
                users=users,
                items=items,
                progress=not quiet,
                resume=resume,
                forget_users=forget_users,
                pseudonymise_key=pseudonymise_key,
                item_vectors=item_vectors,
                private=privacy,
                columns=columns,
            )
        manifest = Path(out) / "manifest.json"
        if quiet and manifest.is_file() and os.environ.get("RANK", "0") == "0":
            click.echo(f"wrote {out} ({json.loads(manifest.read_text())['model_version']})")
    finally:
        if distributed is not None:
            distributed.shutdown()


@click.command("add-items")
@click.option(
    "--artifact",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Artifact of a content model (content_sasrec) trained here.",
)
@click.option("--items", required=True, type=FILE, help="Item table holding the new items (and any updated rows).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New artifact directory.")
@click.option("--item-vectors", type=FILE, help="Vectors, as in training.")
@click.option("--checkpoint", type=FILE, help="content_model.pt (default: ARTIFACT.ckpt/content_model.pt).")
def add_items(artifact, items, out, item_vectors, checkpoint) -> None:
    """Add items without interactions to a content model by re-export (no retraining)."""
    from trainer.export.add_items import add_items as add

    manifest = add(artifact, items, out, content_checkpoint=checkpoint, item_vectors=item_vectors)
    click.echo(f"wrote {out} ({manifest.model_version}): {manifest.training['added_items']['count']} item(s) added")


@click.command()
@click.option("--artifact", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--test", "test_path", required=True, type=FILE, help="Table of user_id,item_id rows to predict.")
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--protocol",
    default="full",
    show_default=True,
    type=click.Choice(["full", "sampled"]),
    help="Rank against every unseen item, or against --negatives sampled ones.",
)
@click.option("--negatives", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--sampling", default="uniform", show_default=True, type=click.Choice(["uniform", "popularity"]))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@columns_option
def evaluate(artifact, test_path, k, protocol, negatives, sampling, as_json, columns) -> None:
    """Offline evaluation of an artifact's ONNX model (seen items excluded)."""
    from trainer.evaluate import evaluate_artifact

    result = evaluate_artifact(
        artifact, test_path, k=k, protocol=protocol, negatives=negatives, sampling=sampling, columns=columns
    )
    for key, value in result.items():
        click.echo(f"{key:>26}  {value:.4f}" if isinstance(value, float) else f"{key:>26}  {value}")
    if as_json:
        click.echo(json.dumps(result))


@click.command()
@click.option(
    "--interactions",
    required=True,
    type=click.Path(exists=True),
    help="Training table or directory of Parquet files; split leave-last-out when --test is not given.",
)
@click.option("--test", "test_path", type=FILE, help="user_id,item_id rows to predict.")
@click.option("--users", type=FILE)
@click.option("--items", type=FILE)
@click.option(
    "--models",
    default="sasrec,gru4rec,caser",
    show_default=True,
    help="Comma-separated next-item models (built-in names or file.py:Class).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for artifacts, compare.json and compare.png.",
)
@click.option("--epochs", type=int)
@click.option("--seed", type=int)
@click.option(
    "--seeds",
    help="Comma-separated seeds: each model trains once per seed; the table gives mean ± std (overrides --seed).",
)
@click.option("--config", "config_file", type=FILE)
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--quiet", is_flag=True)
@columns_option
def compare(
    interactions, test_path, users, items, models, out, epochs, seed, seeds, config_file, k, quiet, columns
) -> None:
    """Train several models on one split, evaluate each, print a table, write a plot."""
    from recsys.config import load_config
    from trainer.compare import compare_models
    from trainer.registry import BUILTIN_NAMES, resolve

    def next_item(name: str) -> bool:
        try:
            return resolve(name).task == "next_item"
        except ValueError:
            return False

    names = [m.strip() for m in models.split(",") if m.strip()]
    unsupported = [m for m in names if not next_item(m)]
    if unsupported or not names:
        raise click.BadParameter(
            f"unknown or unsupported model(s) {', '.join(unsupported) or '(none given)'}; "
            f"compare takes next-item models: {', '.join(filter(next_item, BUILTIN_NAMES))}",
            param_hint="--models",
        )
    try:
        seed_list = tuple(int(x) for x in (seeds or "").split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None
    spec = resolve(names[0])  # every next-item family shares one config class
    cfg = load_config(
        spec.config_cls, file=config_file, env_prefix=spec.env_prefix, overrides={"epochs": epochs, "seed": seed}
    )
    compare_models(
        interactions,
        names,
        out,
        cfg,
        test=test_path,
        users=users,
        items=items,
        k=k,
        progress=not quiet,
        columns=columns,
        seeds=seed_list,
    )
