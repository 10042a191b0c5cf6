"""`recsys data download | split | synth`: get data sets."""

from __future__ import annotations

import json

import click

from recsys.cli._options import columns_option


@click.group()
def data() -> None:
    """Get data sets."""


@data.command("download")
@click.argument("name", type=click.Choice(["movielens-100k"]))
@click.option("--to", "to_dir", required=True, type=click.Path(file_okay=False), help="Directory for the tables.")
def download(name: str, to_dir: str) -> None:
    """Download a data set and write interactions.csv, users.csv, items.csv."""
    from trainer.data.download import download_movielens_100k

    try:
        result = download_movielens_100k(to_dir)
    except RuntimeError as exc:  # every source failed; the message lists them
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=2))


@data.command("split")
@click.option(
    "--interactions",
    required=True,
    type=click.Path(exists=True),
    help="A table file, or a directory of Parquet files (part-*.parquet, hive partitions allowed).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--target-events",
    default="",
    help="Comma-separated event kinds (e.g. purchase): each user's last event of those kinds is the "
    "test row and the user's later events are dropped (needs an event column).",
)
@columns_option
def split(interactions: str, out_dir: str, columns: dict[str, str] | None, target_events: str) -> None:
    """Leave-last-out split: each user's last event (by time) -> test.csv, the rest -> train.csv."""
    from trainer.data.split import write_leave_last_out

    kinds = tuple(kind.strip() for kind in target_events.split(",") if kind.strip())
    click.echo(json.dumps(write_leave_last_out(interactions, out_dir, columns, kinds), indent=2))


@data.command("synth")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Write interactions.parquet (or .csv) and synth.json here.",
)
@click.option(
    "--artifact",
    type=click.Path(file_okay=False),
    help="Also train SASRec briefly on the data (in memory) and export a benchmark artifact here.",
)
@click.option("--items", default=1_000_000, show_default=True, type=click.IntRange(min=1))
@click.option("--users", default=1_000_000, show_default=True, type=click.IntRange(min=1))
@click.option("--interactions", default=50_000_000, show_default=True, type=click.IntRange(min=1))
@click.option("--zipf", default=0.9, show_default=True, type=float, help="Popularity power-law exponent.")
@click.option(
    "--follow", default=0.6, show_default=True, type=float, help="Probability the next item follows the current one."
)
@click.option(
    "--topics",
    default=1000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Latent item topics (categories) users have tastes for; 0 = none.",
)
@click.option(
    "--taste",
    default=0.7,
    show_default=True,
    type=float,
    help="Probability a fresh event / a successor stays in the user's / item's topics.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--format", "fmt", default="parquet", show_default=True, type=click.Choice(["parquet", "csv"]))
@click.option(
    "--steps",
    default=1500,
    show_default=True,
    type=click.IntRange(min=1),
    help="--artifact: training steps (batches of 128 windows).",
)
@click.option(
    "--export-users",
    default=5000,
    show_default=True,
    type=click.IntRange(min=1),
    help="--artifact: users whose histories go into the artifact (for the feature service and benchmarks).",
)
@click.option(
    "--ann",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "on", "off"]),
    help="--artifact: build an ANN index (auto: from 100k items).",
)
@click.option(
    "--ann-backend",
    default="norm-pruned",
    show_default=True,
    type=click.Choice(["norm-pruned", "faiss-ivf", "faiss-hnsw", "usearch"]),
)
@click.option(
    "--target-recall",
    default=0.97,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="--artifact: the fastest search setting (norm-pruned cosine cap, faiss-ivf nprobe) whose "
    "recall@10 on held-apart users reaches this.",
)
@click.option(
    "--threads",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="--artifact: torch threads (0 = torch's choice).",
)
def synth(
    out_dir,
    artifact,
    items,
    users,
    interactions,
    zipf,
    follow,
    topics,
    taste,
    seed,
    fmt,
    steps,
    export_users,
    ann,
    ann_backend,
    target_recall,
    threads,
) -> None:
    """Synthetic interactions at scale (power-law popularity, topics and tastes, sequences), streamed to disk."""
    from trainer.synth import SynthConfig, train_synth_artifact, write_synth

    if not out_dir and not artifact:
        raise click.UsageError("give --out (data files), --artifact (a benchmark model), or both")
    cfg = SynthConfig(
        items=items,
        users=users,
        interactions=interactions,
        zipf=zipf,
        follow=follow,
        topics=topics,
        taste=taste,
        seed=seed,
    )
    cfg.check()

    def log(message: str) -> None:
        click.echo(message, err=True)

    if out_dir:
        click.echo(json.dumps(write_synth(cfg, out_dir, fmt=fmt, log=log), indent=2))
    if artifact:
        manifest = train_synth_artifact(
            cfg,
            artifact,
            steps=steps,
            export_users=export_users,
            ann=ann,
            ann_backend=ann_backend,
            target_recall=target_recall,
            threads=threads,
            log=log,
        )
        click.echo(f"wrote {artifact} ({manifest.model_version})")
