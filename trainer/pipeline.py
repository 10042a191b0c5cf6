"""`recsys train`: tables -> cleaned data -> item index -> fit -> artifact.

Only glue lives here; each step is a function of its own module.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow.parquet as pq

from recsys.artifact import Manifest
from recsys.pseudonym import Pseudonymiser
from trainer import distributed
from trainer.data.encoding import (
    build_item_index,
    build_schema,
    encode_events,
    encode_histories,
    encode_weights,
    event_vocabulary,
    history_rows,
)
from trainer.data.shards import agreed_item_counts, item_index_from_counts, parquet_files, read_log_shard
from trainer.data.tables import Tables, feature_rows, load_tables
from trainer.export.next_item import ExportInputs, export_artifact
from trainer.families.content import CONTENT_CHECKPOINT, prepare_content_model, save_content_model
from trainer.families.next_item import TrainConfig, fit
from trainer.models import CLASSIC_MODELS, CONTENT_MODELS
from trainer.models.custom import kind_of

__all__ = ["build_item_index", "encode_histories", "train_and_export"]


def read_forgotten(path: str | Path) -> set[str]:
    """User ids from a `recsys features forgotten` file (one JSON object per line)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return {json.loads(line)["user_id"] for line in lines if line.strip()}


def pseudonymise_tables(tables: Tables, key_file: str | Path) -> Pseudonymiser:
    """Replaces user ids by their keyed pseudonyms (recsys/pseudonym.py) in place, at ingestion."""
    pseudonym = Pseudonymiser.from_file(key_file)
    for frame in (tables.interactions, tables.users):
        if frame is not None:
            mapping = {u: pseudonym(u) for u in frame["user_id"].unique()}
            frame["user_id"] = frame["user_id"].map(mapping)
    return pseudonym


def prepare_tables(
    interactions: str | Path,
    users: str | Path | None = None,
    items: str | Path | None = None,
    *,
    forget_users: str | Path | None = None,
    pseudonymise_key: str | Path | None = None,
    columns: dict[str, str] | None = None,
    log=print,
) -> tuple[Tables, Pseudonymiser | None]:
    """The tables every family trains on: loaded and cleaned, user ids pseudonymised with
    `pseudonymise_key` before anything else sees them, and the users of a `forget_users` file
    (`recsys features forgotten`; named by pseudonym or by raw id) left out. `columns`: see
    load_tables."""
    tables = load_tables(interactions, users, items, columns=columns)
    pseudonym = pseudonymise_tables(tables, pseudonymise_key) if pseudonymise_key else None
    if forget_users:
        gone = read_forgotten(forget_users)
        gone |= {pseudonym(u) for u in gone} if pseudonym else set()
        before = len(tables.interactions)
        tables.interactions = tables.interactions[~tables.interactions["user_id"].isin(gone)].reset_index(drop=True)
        if tables.users is not None:
            tables.users = tables.users[~tables.users["user_id"].isin(gone)]
        log(f"left out {len(gone)} forgotten user(s): {before - len(tables.interactions)} interactions")
    log(tables.report.summary())
    return tables, pseudonym


def prepare_shard(
    interactions: str | Path,
    cfg: TrainConfig,
    users: str | Path | None = None,
    items: str | Path | None = None,
    *,
    forget_users: str | Path | None = None,
    pseudonymise_key: str | Path | None = None,
    columns: dict[str, str] | None = None,
    log=print,
):
    """`cfg.shard_by_user` under DDP: this rank's tables (its users' rows of a Parquet file or
    directory, trainer/data/shards.py), the item index every rank agrees on, and the whole log's
    report (users, interactions and drops summed over the ranks). Collectives: every rank calls it.

    Returns (tables, pseudonymiser or None, item index, report). ValueError outside DDP, for a
    log that is not Parquet, and for what trains on the whole log in one process (private
    training, ensembles, content models, classic baselines) or resumes.
    """
    dist = distributed.current()
    if not dist.enabled:
        raise ValueError(
            "shard_by_user splits the users over DDP ranks: run it under torchrun or `recsys train --nproc N`, N >= 2"
        )
    whole = sorted(CLASSIC_MODELS) + sorted(CONTENT_MODELS) + ["ensemble"]
    if cfg.model in whole:
        raise ValueError(
            f"shard_by_user trains one DDP model; not {cfg.model!r} ({', '.join(whole)} need the whole log)"
        )
    parquet_files(interactions)  # ValueError for CSV and other formats, before any rank reads
    user_column = (columns or {}).get("user_id", "user_id")
    label = f"{interactions} (rank {dist.rank} of {dist.world_size}: its users)"
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "shard.parquet"
        pq.write_table(read_log_shard(interactions, dist.rank, dist.world_size, user_column=user_column), shard)
        tables, pseudonym = prepare_tables(
            shard,
            users,
            items,
            forget_users=forget_users,
            pseudonymise_key=pseudonymise_key,
            columns=columns,
            log=lines.append,
        )
    for line in lines:
        log(line.replace(str(shard), label))
    counts = tables.interactions["item_id"].value_counts()
    total = agreed_item_counts(Counter({str(k): int(v) for k, v in counts.items() if v > 0}), dist)
    index = item_index_from_counts(total, tables.items)
    mine = tables.report
    parts = dist.gather_objects((mine.rows_read, mine.users, mine.interactions, mine.dropped))
    dropped: Counter = Counter()
    for part in parts:
        dropped.update(part[3])
    report = replace(
        mine,
        source=str(interactions),
        rows_read=sum(p[0] for p in parts),
        users=sum(p[1] for p in parts),
        items=len(index.item_ids),
        interactions=sum(p[2] for p in parts),
        dropped=dict(dropped),
    )
    return tables, pseudonym, index, report


def train_and_export(
    interactions: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    users: str | Path | None = None,
    items: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
    checkpoint_dir: str | Path | None = None,
    forget_users: str | Path | None = None,
    pseudonymise_key: str | Path | None = None,
    item_vectors: str | Path | None = None,
    private=None,
    columns: dict[str, str] | None = None,
    log=print,
    validator=None,
    select: str | None = None,
) -> Manifest | None:
    """Trains `cfg.model` on the tables and writes the artifact to `out_dir`.

    Under DDP every rank trains; rank 0 exports and returns the manifest, the others None.

    The training state is checkpointed every epoch into `checkpoint_dir` (default: `<out_dir>.ckpt`
    beside the artifact); `resume=True` continues an interrupted run from there. `forget_users`
    is a file from `recsys features forgotten`: those users are left out of training and export.
    Content models (trainer.models.CONTENT_MODELS) need `items` and take optional `item_vectors`
    (trainer/families/content.py); their catalogue is every item of the item table, and their weights go
    to `<checkpoint_dir>/content_model.pt` for adding items later. `private`: a
    trainer.families.private.PrivacyConfig for DP-SGD training (Opacus; fixed length, no early stopping);
    the (ε, δ) spent goes into the manifest's `privacy`. `validator` and `select` go to `fit`
    (extra validation metrics and the one that selects the epoch). `cfg.shard_by_user` (under
    DDP, a Parquet log): each rank reads and trains on its own users only (`prepare_shard`);
    every rank's histories reach rank 0's artifact, a chunk at a time.
    """
    shards = cfg.shard_by_user
    if shards and (private is not None or resume):
        raise ValueError("shard_by_user: private (DP-SGD) training and --resume are not supported")
    if shards:
        tables, pseudonym, index, report = prepare_shard(
            interactions,
            cfg,
            users,
            items,
            forget_users=forget_users,
            pseudonymise_key=pseudonymise_key,
            columns=columns,
            log=log,
        )
    else:
        tables, pseudonym = prepare_tables(
            interactions,
            users,
            items,
            forget_users=forget_users,
            pseudonymise_key=pseudonymise_key,
            columns=columns,
            log=log,
        )
        index, report = build_item_index(tables.interactions, tables.items), tables.report
    _, sequences = encode_histories(tables.interactions, index)
    kinds = event_vocabulary(tables.interactions)  # () without an event column
    if shards:  # every kind of any rank, in the sorted order event_vocabulary gives
        kinds = tuple(sorted(set().union(*distributed.current().gather_objects(kinds))))
    events, weights = encode_events(tables.interactions, kinds), encode_weights(tables.interactions)
    checkpoint_dir = checkpoint_dir or Path(out_dir).with_name(Path(out_dir).name + ".ckpt")
    if cfg.user_features or cfg.item_features:
        if private is not None or item_vectors is not None or shards:
            raise ValueError(
                "user_features and item_features do not combine with --private, --item-vectors or shard_by_user"
            )
        if events is not None or weights is not None:
            raise ValueError("user_features and item_features do not read event kinds or weights yet")
        from trainer.export.side_info import train_and_export_side_info

        return train_and_export_side_info(
            interactions,
            out_dir,
            cfg,
            user_features=cfg.user_features,
            item_features=cfg.item_features,
            tables=tables,
            progress=progress,
            resume=resume,
            checkpoint_dir=checkpoint_dir,
            log=log,
            validator=validator,
            select=select,
        )
    prebuilt, content_spec = None, None
    if cfg.model in CONTENT_MODELS:
        index, prebuilt, content_spec = prepare_content_model(cfg, tables.items, index, sequences, item_vectors)
    if (private is not None or cfg.model == "ensemble") and (cfg.target_events or cfg.event_weights or cfg.read_events):
        raise ValueError(
            "target_events, event_weights and read_events train a single next-item model; "
            "private (DP-SGD) training and ensembles do not take event kinds"
        )
    if private is not None and cfg.model == "ensemble":
        raise ValueError("private (DP-SGD) training of an ensemble is not supported: train one model")
    if private is not None:
        from trainer.families.private import fit_private

        result = fit_private(cfg, private, sequences, len(index.item_ids), progress=progress, model=prebuilt)
    elif cfg.model == "ensemble":
        from trainer.families.ensemble import fit_ensemble

        result = fit_ensemble(
            cfg,
            sequences,
            len(index.item_ids),
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            log=log,
        )
    else:
        result = fit(
            cfg,
            sequences,
            len(index.item_ids),
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            model=prebuilt,
            validator=validator,
            select=select,
            events=events,
            weights=weights,
            event_kinds=kinds,
        )
    histories = history_rows(tables.interactions)
    if shards:  # every rank's users to rank 0, spooled to disk a chunk at a time (the artifact holds them all)
        streamed = distributed.current().stream_to_main(histories)
        histories = _spool(streamed) if distributed.current().is_main else deque(streamed, maxlen=0)
    if not distributed.current().is_main:
        return None  # under DDP only rank 0 holds the selected model and writes the artifact
    if result.resumed_from:
        log(f"resumed from epoch {result.resumed_from} ({checkpoint_dir})")
    what = (
        f"ensemble of {len(result.members)} members"
        if result.members
        else f"best epoch {result.best_epoch} of {len(result.history)}"
    )
    log(
        f"{what} in {result.seconds:.0f} s: "
        + ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items() if "@" in k)
    )
    privacy = getattr(result, "privacy", {})
    if privacy:
        log(
            f"privacy spent: epsilon {privacy['epsilon']:.3f} at delta {privacy['delta']:.2e} ({privacy['unit']}-level)"
        )
    if content_spec is not None and not privacy:
        save_content_model(Path(checkpoint_dir) / CONTENT_CHECKPOINT, result.model, content_spec, index.item_ids)
    schema = build_schema(tables, index, cfg.max_len)
    user_rows = feature_rows(tables.users, schema.user_features, "user_id") if tables.users is not None else iter(())
    item_rows = feature_rows(tables.items, schema.item_features, "item_id") if tables.items is not None else iter(())
    manifest = export_artifact(
        result.model,
        ExportInputs(
            model_kind=kind_of(cfg.model),
            max_len=cfg.max_len,
            item_index=index,
            schema=schema,
            histories=histories,
            users=user_rows,
            items=item_rows,
            training={
                "config": asdict(cfg),
                **({"resolved": result.settings} if result.settings else {}),
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "seconds": round(result.seconds, 1),
                "history": result.history,
                **({"pseudonymised": pseudonym.describe()} if pseudonym else {}),
                **({"content": content_spec.to_dict()} if content_spec is not None else {}),
                **({"members": result.members} if result.members else {}),
                "data": {
                    "users": report.users,
                    "items": report.items,
                    "interactions": report.interactions,
                    "dropped": report.dropped,
                },
                # shard_by_user: validation covers rank 0's users only
                **(
                    {"shards": {"world_size": distributed.current().world_size, "rank0_users": len(sequences)}}
                    if shards
                    else {}
                ),
            },
            metrics={f"valid_{k}": v for k, v in result.best_metrics.items() if "@" in k},
            privacy=privacy,
            events=tuple(result.settings.get("events", ())),
        ),
        out_dir,
        ann=cfg.ann,
        ann_backend=cfg.ann_backend,
        int8=cfg.int8,
    )
    log(f"wrote {out_dir} ({manifest.model_version})")
    return manifest


def _spool(rows) -> Iterator[dict]:
    """`rows` (JSON-able dicts) consumed at once into a temporary JSON Lines file (the ranks
    sending them must not wait for the export), replayed from there."""
    spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (closed by the replay)
    for row in rows:
        spool.write(json.dumps(row) + "\n")
    spool.seek(0)

    def replay() -> Iterator[dict]:
        with spool:
            for line in spool:
                yield json.loads(line)

    return replay()
