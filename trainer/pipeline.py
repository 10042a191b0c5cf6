"""`recsys train`: tables -> cleaned data -> item index -> fit -> artifact.

Only glue lives here; each step is a function of its own module.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

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
from trainer.data.tables import Tables, feature_rows, load_tables
from trainer.export.next_item import ExportInputs, export_artifact
from trainer.families.content import CONTENT_CHECKPOINT, prepare_content_model, save_content_model
from trainer.families.next_item import TrainConfig, fit
from trainer.models import CONTENT_MODELS
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
    (extra validation metrics and the one that selects the epoch).
    """
    tables, pseudonym = prepare_tables(
        interactions,
        users,
        items,
        forget_users=forget_users,
        pseudonymise_key=pseudonymise_key,
        columns=columns,
        log=log,
    )
    index = build_item_index(tables.interactions, tables.items)
    _, sequences = encode_histories(tables.interactions, index)
    kinds = event_vocabulary(tables.interactions)  # () without an event column
    events, weights = encode_events(tables.interactions, kinds), encode_weights(tables.interactions)
    checkpoint_dir = checkpoint_dir or Path(out_dir).with_name(Path(out_dir).name + ".ckpt")
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
            histories=history_rows(tables.interactions),
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
                    "users": tables.report.users,
                    "items": tables.report.items,
                    "interactions": tables.report.interactions,
                    "dropped": tables.report.dropped,
                },
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
